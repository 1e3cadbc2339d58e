"""relion-py-extract against RELION 5.0.1's own output, file by file (compare.py's default tolerances)."""
import pytest

from relion_py.cli.extract import main

STACK2D_CASES = [
    "a_subtomo_stack2d",
    "b_subtomo_stack2d_bin2",
    "c_subtomo_stack2d_noctf_nocircle",
    "d_subtomo_stack2d_float16",
    "h3_subtomo_stack2d_minframes_maxdose",
    "h6_subtomo_stack2d_no_ic",
    "h2_subtomo_stack2d_dont_apply_offsets",
    "h12_subtomo_stack2d_relion4_coords",
    "h13_subtomo_stack2d_picked",
]


@pytest.mark.parametrize("case", STACK2D_CASES)
def test_stack2d_matches_relion(case, relion_case):
    relion_case(case, main)


@pytest.mark.parametrize("case", ["h4_subtomo_stack2d_whiten", "h7_subtomo_stack2d_aberrations"])
def test_stack2d_whiten_and_aberrations_match_relion(case, relion_case):
    relion_case(case, main)
