"""Pure PyTorch: audio features, Style-SyncFormer, the rewired style-based generator, the
discriminator, losses, the mesh renderer, training loops and checkpoint I/O. Imports nothing of ours."""
