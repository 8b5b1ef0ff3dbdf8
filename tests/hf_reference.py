"""transformers' BERT as a reference in tests: parameters that cannot hide a mapping error."""

import torch


def randomize_(hf: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Draws every parameter of ``hf`` afresh, in place: LayerNorm scales 1 + 0.1·N(0, 1),
    other vectors (biases, LayerNorm shifts) 0.1·N(0, 1), matrices 0.02·N(0, 1). Nothing is
    left at a zero or one initialisation, so a mis-mapped tensor, or weight decay wrongly
    applied to a bias or LayerNorm, shows in the outputs. Returns ``hf``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # named_parameters lists each tied tensor once, so the decoder stays tied.
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("LayerNorm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.02 * noise)
    return hf
