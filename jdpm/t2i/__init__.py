"""The built-in text-to-image model: captioned scenes, a word tokenizer with CLIP's layout, a small causal
CLIP-style text encoder pre-trained contrastively and frozen, a cross-attention UNet denoiser, and a proxy
classifier of the scenes' shapes, colours and layout (`python -m jdpm.t2i.train`)."""
