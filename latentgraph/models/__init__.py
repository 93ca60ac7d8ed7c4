"""The networks and their files: UNet, VAE, text encoders, checkpoints."""
