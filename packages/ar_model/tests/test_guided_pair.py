"""The CFG pair retry protocol the images endpoint and the HTTP client share (no vLLM needed)."""

import pytest

from meditok.ar.vllm_plugin.guided_pair import CFG_ATTEMPTS, GuidedPair, Unavailable, shared_seed


def test_lockstep_needs_every_code_and_eoi_equal_in_both_branches():
    pair = GuidedPair(n_codes=4)
    full = [5, 6, 7, 8, 99]  # 4 codes + <eoi>
    assert pair.in_lockstep(full, list(full))
    assert pair.in_lockstep(full + [2], full)  # what follows <eoi> (end of sequence) is not compared
    assert not pair.in_lockstep(full[:4], full[:4])  # cut short: the processor ended a split pair
    assert not pair.in_lockstep(full, [5, 6, 7, 9, 99])  # the branches drew differently
    assert not pair.in_lockstep(full, full[:3])


def test_each_attempt_has_a_fresh_key_and_running_out_is_a_503():
    pair = GuidedPair(n_codes=4, attempts=3, where="http://server")
    keys = list(pair.keys())
    assert len(keys) == 3 and len(set(keys)) == 3
    assert len(list(GuidedPair(1).keys())) == CFG_ATTEMPTS == 4
    error = pair.split_error()
    assert isinstance(error, Unavailable) and isinstance(error, RuntimeError)
    assert "http://server" in str(error) and "3 times" in str(error)
    with pytest.raises(ValueError):
        GuidedPair(4, attempts=0)


def test_both_branches_share_a_seed():
    assert shared_seed(7) == 7
    drawn = shared_seed(None)
    assert isinstance(drawn, int) and 0 <= drawn < 2**31
