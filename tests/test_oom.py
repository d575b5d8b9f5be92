import pytest
import torch

from dreamy.oom import OutOfMemory, explain_oom


def test_out_of_memory_becomes_a_clear_message():
    with pytest.raises(OutOfMemory, match="ran out of memory during dream; lower the batch size.*next job can run"):
        with explain_oom("dream"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(OutOfMemory, match="during enlarge; turn tiling on"):
        with explain_oom("enlarge"):
            raise RuntimeError("CUDA error: out of memory")


def test_other_errors_pass_through_unchanged():
    with pytest.raises(ValueError, match="unrelated"):
        with explain_oom("dream"):
            raise ValueError("unrelated")
