"""pix2pix-lora, the embedded default converter family.

model    Generator (residual U-Net over :func:`~.model.stylise`), PatchDiscriminator,
         build_model, prepare; imported by serving
losses   structure, style (Gram), colour, LSGAN, feature matching, optional L1 and VGG
train    the linear training script: ``parse_args(argv)`` -> ``main(args)``
"""
