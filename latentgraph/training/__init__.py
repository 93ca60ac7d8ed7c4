"""Training the demo model: a procedural data set of captioned shapes, and the two stages of
latent diffusion training (KL autoencoder, then a text-conditioned eps-predicting UNet)."""
