"""How the paper's global batch is split over GPU ranks and micro-batches (ABE_SPEC section 3).

``--batch`` is the batch of one SGD iteration, whatever the hardware: with N ranks each runs
batch/N images, and with ``iter_size`` K each forward pass runs batch/(N·K). Caffe's multi-GPU
solver averages the ranks' gradients and divides the accumulated passes by K, so the update is
the gradient of the whole batch (every loss term is a mean over pairs or images, and GoogLeNet
has no batch statistics). Pairs stay whole: every pass holds an even number of images.
"""
from dataclasses import dataclass

from abe.errors import UserError


@dataclass(frozen=True)
class BatchLayout:
    """One iteration's images: ``batch`` = ``ranks`` × ``iter_size`` × ``pass_batch``."""
    batch: int
    ranks: int = 1
    iter_size: int = 1

    def __post_init__(self):
        if self.batch < 2 or self.batch % 2:
            raise UserError(f"--batch must be an even number of images (pairs a/b), "
                            f"got {self.batch}")
        if self.ranks < 1 or self.iter_size < 1:
            raise UserError(f"GPUs and --iter-size must be positive, got {self.ranks} and "
                            f"{self.iter_size}")
        if self.batch % (2 * self.ranks):
            raise UserError(f"--batch {self.batch} over {self.ranks} GPUs is "
                            f"{self.batch / self.ranks:g} images per GPU: it must be an even "
                            f"whole number (pairs a/b); choose a batch divisible by "
                            f"{2 * self.ranks}")
        if self.rank_batch % (2 * self.iter_size):
            raise UserError(f"--iter-size {self.iter_size} does not split the {self.rank_batch} "
                            f"images per GPU into whole pairs; choose a divisor of "
                            f"{self.rank_batch // 2}")

    @property
    def rank_batch(self):
        """Images one rank processes per iteration."""
        return self.batch // self.ranks

    @property
    def pass_batch(self):
        """Images of one forward/backward pass (the train net's batch)."""
        return self.rank_batch // self.iter_size

    @property
    def pass_pairs(self):
        return self.pass_batch // 2

    @property
    def passes(self):
        """Forward passes of one iteration over all ranks: each draws its own pairs."""
        return self.ranks * self.iter_size

    def positive_pairs(self, rank, pass_index):
        """Positive pairs of one pass: half of the iteration's pairs are positive, spread as
        evenly as whole pairs allow over the ranks' passes (exactly half of every pass when
        its pair count is even)."""
        slot, pairs = rank * self.iter_size + pass_index, self.pass_pairs
        return (slot + 1) * pairs // 2 - slot * pairs // 2

    def describe(self):
        where = (f"{self.ranks} GPU ranks x {self.rank_batch} images" if self.ranks > 1
                 else "one process")
        return (f"batch {self.batch} per iteration ({where}); {self.pass_batch} images "
                f"({self.pass_pairs} pairs) per forward pass, iter_size {self.iter_size}")

    def as_dict(self):
        return {"batch": self.batch, "gpus": self.ranks, "rank_batch": self.rank_batch,
                "pass_batch": self.pass_batch, "iter_size": self.iter_size}


def pair_sampling(layout):
    """The PairDataLayer param_str keys that realize ``layout`` on every rank."""
    schedule = [[layout.positive_pairs(rank, k) for k in range(layout.iter_size)]
                for rank in range(layout.ranks)]
    return {"batch_pairs": layout.pass_pairs, "positive_pairs": schedule[0][0],
            "positive_schedule": schedule}


def pass_batches(rank_batch):
    """The per-pass batches that split ``rank_batch`` into whole pairs, largest first."""
    pairs = rank_batch // 2
    return [2 * p for p in range(pairs, 0, -1) if pairs % p == 0]


def fit_to_memory(layout, net_memory, device_bytes, reserve=0):
    """``layout`` with the largest pass batch whose memory plan fits ``device_bytes`` (its
    iter_size raised to match); a UserError when not even one pair per pass fits."""
    from abe.net.memory_plan import gib

    chosen = net_memory.largest_fitting(pass_batches(layout.rank_batch), device_bytes, reserve)
    if chosen is None:
        need = net_memory.plan(2).total + reserve
        raise UserError(f"the net needs {gib(need)} even at one pair per forward pass; the "
                        f"device has {gib(device_bytes)}")
    return BatchLayout(layout.batch, layout.ranks, layout.rank_batch // chosen)
