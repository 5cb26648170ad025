"""cifar-s12: train the course ResNet on CIFAR-10 with plain PyTorch + OneCycle, or with PyTorch Lightning."""
