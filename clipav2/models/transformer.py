"""Pre-LN transformer blocks (biases everywhere, GELU tanh|exact, LayerNorm eps from the
architecture). Checkpointing, compile and sharding are applied from outside
(`clipav2.parallel.apply`)."""
from torch import nn

from clipav2.models.arch import GELUS
from clipav2.models.attention import Attention


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, gelu: str):
        super().__init__()
        if gelu not in GELUS:
            raise ValueError(f"gelu: {gelu!r} is not one of {', '.join(GELUS)}")
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate="tanh" if gelu == "tanh" else "none")
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp: int, gelu: str, ln_eps: float, attention: str,
                 causal: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=ln_eps)
        self.attn = Attention(width, heads, attention, causal=causal)
        self.norm2 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = Mlp(width, mlp, gelu)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def make_blocks(depth, width, heads, mlp, gelu, ln_eps, attention, causal=False) -> nn.ModuleList:
    return nn.ModuleList(Block(width, heads, mlp, gelu, ln_eps, attention, causal) for _ in range(depth))


