"""--help and --version of every command-line program."""
import pytest

from relion_py import __version__
from relion_py.cli import extract, portal, reconstruct


@pytest.mark.parametrize("cli", [extract, portal, reconstruct])
def test_every_cli_has_version(cli, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(cli.PROG) and __version__ in out and "RELION 5.0.1" in out


def test_reconstruct_help_documents_the_tilt_series_flags(capsys):
    assert reconstruct.main(["--help"]) == 0
    out = capsys.readouterr().out
    image, tilt_series = out.split("=" * 100)
    assert "--3d_rot" in image and "--ctf" in image
    for flag in ("--t FILE", "--p FILE", "--b VALUE", "--crop", "--SNR", "--j_out", "--only_do_unfinished",
                 "--no_backup"):
        assert flag in tilt_series, flag
    assert "--b VALUE" not in image
