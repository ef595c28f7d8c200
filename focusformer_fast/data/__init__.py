"""Images in: datasets and their splits (digits, CIFAR-100, image folders), augmentation, the cache, loaders."""
