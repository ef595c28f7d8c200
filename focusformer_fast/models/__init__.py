"""Models: the weight-sharing supernet, its CUDA graphs, one subnet as a dense ViT, and as a timm model on disk."""
