"""Loop progress bars (obliviate.progress): counts and time left on stderr, switched off by OBLIVIATE_PROGRESS=0."""

from __future__ import annotations

from obliviate.progress import progress


def test_bar_shows_counts_on_stderr(capsys, monkeypatch):
    monkeypatch.delenv("OBLIVIATE_PROGRESS", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert list(progress(range(5), desc="probe forget", unit="row", mininterval=0)) == [0, 1, 2, 3, 4]
    err = capsys.readouterr().err
    assert "probe forget" in err and "5/5" in err and "row" in err
    with progress(total=8, desc="generation", unit="prompt", mininterval=0) as bar:
        bar.update(3)
        bar.update(5)
    err = capsys.readouterr().err
    assert "8/8" in err and "<00:00" in err  # count and time left


def test_switched_off(capsys, monkeypatch):
    monkeypatch.setenv("OBLIVIATE_PROGRESS", "0")
    assert sum(progress(range(4), desc="quiet")) == 6
    assert "quiet" not in capsys.readouterr().err
