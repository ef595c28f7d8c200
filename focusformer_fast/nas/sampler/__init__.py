"""Which subnet to train and propose: the FocusFormer policy sampler, its reward estimator and record, the baselines."""
