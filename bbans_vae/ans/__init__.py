"""Bits-back ANS coding of many images (docs/DESIGN.md: math, chain layout, determinism).

    codecs.py   push/pop codecs on constriction's ANS stack, the latent buckets, bits_back
    chains.py   the chain layout, the float32 backend, encode_images / decode_images
    refine.py   the refinement backend (transmit-free posterior refinement at coding time)
"""
