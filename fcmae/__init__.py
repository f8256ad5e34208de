"""FCMAE: masks, the masked autoencoder (dense and visible-only), the pretraining task, and
reconstruction pictures."""
