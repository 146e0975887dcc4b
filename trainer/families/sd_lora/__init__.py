"""sd-lora: LoRA adapters on a local diffusers InstructPix2Pix pipeline's UNet attention.

model    the pipeline's parts from a local folder (checked, with a clear error naming what
         is missing), the LoRA settings, build_model (the pipeline, with an adapter loaded)
train    the linear training script: ``parse_args(argv)`` -> ``main(args)``
"""
