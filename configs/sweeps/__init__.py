"""Search spaces for `jaxtrain sweep --space` (digits_lr_wd: learning rate and weight decay)."""
