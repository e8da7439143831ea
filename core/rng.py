"""Every random draw derives from (seed, generation, individual, purpose).

No draw depends on the order in which steps run, on the process that runs them or on how a
generation is split into pods, so the same spec and seed give the same history, also after a resume.
"""

import zlib

import numpy as np


def _word(value: int | str) -> int:
    """A stable 32-bit word for an int or a string (Python's hash() is salted per process)."""
    if isinstance(value, str):
        return zlib.crc32(value.encode())
    return int(value) & 0xFFFFFFFF


def seed_sequence(
    seed: int, generation: int, individual: int | str, purpose: str, *extra: int | str
) -> np.random.SeedSequence:
    words = [_word(seed), _word(seed >> 32), _word(generation), _word(individual), _word(purpose)]
    words += [_word(e) for e in extra]
    return np.random.SeedSequence(words)


def generator(
    seed: int, generation: int, individual: int | str, purpose: str, *extra: int | str
) -> np.random.Generator:
    """A numpy generator for one (seed, generation, individual, purpose) draw."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, generation, individual, purpose, *extra)))


def int_seed(seed: int, generation: int, individual: int | str, purpose: str, *extra: int | str) -> int:
    """A 63-bit integer seed, for libraries that take one (torch.Generator.manual_seed)."""
    state = seed_sequence(seed, generation, individual, purpose, *extra).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF
