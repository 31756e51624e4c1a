"""Hub tooling: the model zoo, verified downloads, model cards, Hub-ready folders."""
from .download import WeightsIntegrityError, WeightsUnavailableError, fetch_weights
from .zoo import HUB_ORG_ENV, ZooWeight, hub_org, pretrained_cfgs, zoo
