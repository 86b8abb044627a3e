"""``ftl-agent label import`` / ``label set``, ``identity`` and ``train`` on a data dir, in-process."""

from __future__ import annotations

import pytest

from ftlct.agent.cli import app
from ftlct.agent.status import collect_status
from ftlct.agent.store.database import Database
from ftlct.protocol.cli import run
from tests.agent.federation_support import site_with_embeddings


@pytest.fixture
def site(tmp_path):
    layout, records = site_with_embeddings(tmp_path / "agent", per_class=2, slices=2)
    return layout, records


def cli(capsys, *argv):
    code = run(app, "ftl-agent", list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def status(layout) -> dict:
    db = Database(layout.index, create=False)
    try:
        return collect_status(db)
    finally:
        db.close()


def write_csv(path, rows, header="uid,label"):
    path.write_text("\ufeff" + header + "\n" + "".join(f"{u},{lab}\n" for u, lab in rows) + "\n")
    return path


def test_import_resolves_each_level_and_is_idempotent(site, tmp_path, capsys):
    layout, records = site
    rows = [
        (records[0].study_uid, "normal"),
        (records[1].series_uid, "abnormal"),
        (records[2].sop_uids[0], "normal"),
    ]
    csv = write_csv(tmp_path / "labels.csv", rows)
    code, out, err = cli(capsys, "label", "import", str(csv), "--data-dir", str(layout.root))
    assert code == 0, err
    assert out.strip() == "labels: 3 new, 0 changed, 0 unchanged (1 instance, 1 series, 1 study)"
    code, out, _ = cli(capsys, "label", "import", str(csv), "--data-dir", str(layout.root))
    assert code == 0 and "0 new, 0 changed, 3 unchanged" in out
    assert status(layout)["labels"] == 3

    code, out, _ = cli(
        capsys, "label", "set", records[0].study_uid, "abnormal", "--data-dir", str(layout.root)
    )
    assert code == 0 and "0 new, 1 changed" in out
    assert status(layout)["labels"] == 3


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (
            [("STUDY", "hemorrhage")],
            "uid,label",
            "label 'hemorrhage' is not one of the model's labels (normal, abnormal)",
        ),
        ([("STUDY", "normal"), ("STUDY", "abnormal")], "uid,label", "is labelled 'normal' at"),
        ([("STUDY", "normal")], "study,diagnosis", "the first line must be the header 'uid,label'"),
        (
            [("1.2.3.999", "normal")],
            "uid,label",
            "1 UID(s) not received by this agent (first: 1.2.3.999",
        ),
    ],
)
def test_bad_rows_are_one_line_errors_and_nothing_is_stored(
    site, tmp_path, capsys, rows, header, message
):
    layout, records = site
    rows = [(records[0].study_uid if u == "STUDY" else u, lab) for u, lab in rows]
    csv = write_csv(tmp_path / "labels.csv", [(records[1].series_uid, "normal"), *rows], header)
    code, out, err = cli(capsys, "label", "import", str(csv), "--data-dir", str(layout.root))
    assert code == 1 and out == ""
    assert err.startswith("ftl-agent: error: ") and message in err and err.count("\n") == 1
    assert status(layout)["labels"] == 0


def test_unknown_uids_wait_as_pending_only_when_asked(site, capsys):
    layout, _ = site
    args = ["label", "set", "1.2.3.4.5", "abnormal", "--data-dir", str(layout.root)]
    code, _, err = cli(capsys, *args)
    assert code == 1 and "--allow-pending" in err
    code, out, err = cli(capsys, *args, "--allow-pending")
    assert code == 0 and "1 pending until their images arrive" in out
    report = status(layout)
    assert report["labels"] == 1 and report["labels_pending"] == 1
    code, _, err = cli(
        capsys,
        "label",
        "set",
        "DOE^JOHN",
        "normal",
        "--data-dir",
        str(layout.root),
        "--allow-pending",
    )
    assert code == 1 and "neither a UID this agent received nor a DICOM UID" in err


def test_identity_prints_one_line_and_keeps_the_key(tmp_path, capsys):
    args = ["identity", "--data-dir", str(tmp_path / "d"), "--site", "site-x"]
    code, first, _ = cli(capsys, *args)
    assert code == 0
    site, key = first.strip().split(" ")
    assert site == "site-x" and len(key) == 44 and first.count("\n") == 1
    assert cli(capsys, *args)[1] == first  # created once, then printed again
    assert oct((tmp_path / "d" / "keys" / "site-x.ed25519").stat().st_mode & 0o777) == "0o600"
    code, _, err = cli(capsys, "identity", "--data-dir", str(tmp_path / "d"))
    assert code == 1 and "no site id" in err


def test_train_without_a_round_or_labels_says_why(site, capsys):
    layout, _ = site
    code, _, err = cli(
        capsys, "train", "--data-dir", str(layout.root), "--site", "s1", "--federation", "f"
    )
    assert code == 1 and "training skipped: no round announced yet" in err
