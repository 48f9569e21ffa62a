"""Bits-back ANS coding of many images (docs/DESIGN.md: math, chain layout, determinism).

    codecs.py   push/pop codecs on constriction's ANS stack, the latent buckets, bits_back
    backends.py the Backend protocol (where distributions come from) and the float32 backend
    chains.py   a round's codecs (posterior, pixels, bits back), the chain layout, encode/decode_images
    workers.py  groups of chains in parallel worker processes (--workers)
    refine.py   the refinement backend (transmit-free posterior refinement at coding time)
"""
