"""The diffusion kernel: what every method needs and nothing else.

backbone.py      the Stable Diffusion v1 backbone (UNet, VAE, text encoder, DDPM) and `build_tiny`
architecture.py  the SD1 architecture at toy width (model=tiny, the toy models, the tests)
sd15.py          `load_sd15`: real weights from the hub, the cache, a folder or one checkpoint
tokenizer.py     the CLIP BPE tokenizer as SD1 uses it
diffusion.py     sampling primitives: encode, guided noise, DDPM steps, decode
device.py        `resolve_device` (torch only: the harness's config checks import it without diffusers)
seeding.py       per-sample generators: a sample's randomness is a function of its identity
methods.py       the interface every method implements: `Method`, `Sample`, `Generated`
errors.py        `ConfigError`, `AssetMissingError`

The kernel imports torch, diffusers, transformers and open_clip's tokenizer, never the harness
(import-linter checks it: pyproject.toml). `method/` and `baselines/` stand on it alone.
"""
