"""mhtma_model: the MHTMA inpainting GAN — networks, losses, masks, data, training, evaluation, inference, sketch guidance and web UI."""
