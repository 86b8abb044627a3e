"""DICOM fuzz: hundreds of hostile C-STOREs over the network against a real ``ftl-agent serve``.

pydicom's corpus and seeded mutations of it (``dicom_mutations``) go out over
pynetdicom associations, the dataset bytes unparsed and unchanged. Every case
must get an answer (a C-STORE status, or a rejected presentation context);
the agent must never die; whatever it acknowledged must be in the store, byte
for byte as sent (the first copy of a SOP Instance, as ``keep_first`` says),
and every refusal must be in the quarantine. The CI run sends ~580 cases; the
full run (``-m perf``, ``make bench``) eight times the mutations.
"""

from __future__ import annotations

import collections
import hashlib
import time
from pathlib import Path

import pytest
from pynetdicom import AE

from tests.agent.dicom_mutations import Case, codec_panic_cases, fuzz_cases
from tests.support.dicom_peers import echoscu, raw_file_sending, running_agent, wait_for
from tests.support.ports import LOOPBACK

pytestmark = [pytest.mark.reliability, pytest.mark.filterwarnings("ignore::UserWarning")]

STATUS_NAMES = {0x0000: "stored", 0xA700: "0xA700", 0xA900: "0xA900", 0xC000: "0xC000"}
REFUSED = {0xA900, 0xC000}
CONTEXTS_PER_ASSOCIATION = 100  # under the 128 a request may propose


def send_cases(port: int, cases: list[Case], scratch: Path) -> dict[str, object]:
    """C-STORE every case; the answer per case name: a status, "context rejected" or
    "aborted" (the association ended under it; the next case gets a new one)."""
    answers: dict[str, object] = {}
    contexts = sorted({(c.sop_class, c.syntax) for c in cases})
    for first in range(0, len(contexts), CONTEXTS_PER_ASSOCIATION):
        chunk = set(contexts[first : first + CONTEXTS_PER_ASSOCIATION])
        todo = [c for c in cases if (c.sop_class, c.syntax) in chunk]
        assoc, accepted = None, set()
        for case in todo:
            if assoc is None or not assoc.is_established:
                assoc, accepted = associate(port, chunk)
            if (case.sop_class, case.syntax) not in accepted:
                answers[case.name] = "context rejected"
                continue
            path = scratch / (hashlib.sha256(case.name.encode()).hexdigest()[:16] + ".dcm")
            path.write_bytes(case.data)
            with raw_file_sending():
                status = assoc.send_c_store(path)
            path.unlink()
            if status and "Status" in status:
                answers[case.name] = int(status.Status)
            else:
                answers[case.name] = "aborted" if not assoc.is_established else None
        if assoc is not None and assoc.is_established:
            assoc.release()
    return answers


def associate(port: int, contexts: set[tuple[str, str]]):
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class, syntax in sorted(contexts):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(LOOPBACK, port, ae_title="FTLCT")
    assert assoc.is_established, "the agent refused the association"
    accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
    return assoc, accepted


def outcome_table(cases: list[Case], answers: dict[str, object]) -> dict[str, collections.Counter]:
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for case in cases:
        answer = answers.get(case.name)
        name = STATUS_NAMES.get(answer, str(answer)) if isinstance(answer, int) else str(answer)
        table[case.kind][name] += 1
    return table


def print_table(table, elapsed_s: float, digest_s: float, series: dict) -> None:
    columns = ["stored", "0xA900", "0xC000", "0xA700", "context rejected", "aborted", "None"]
    print(f"\n| kind | cases | {' | '.join(columns)} |")
    print("| --- | ---: |" + " ---: |" * len(columns))
    for kind, counts in sorted(table.items()):
        cells = " | ".join(str(counts.get(c, 0)) for c in columns)
        print(f"| {kind} | {sum(counts.values())} | {cells} |")
    total = collections.Counter()
    for counts in table.values():
        total.update(counts)
    cells = " | ".join(str(total.get(c, 0)) for c in columns)
    print(f"| all | {sum(total.values())} | {cells} |")
    print(f"sent in {elapsed_s:.1f} s; pipeline digested {digest_s:.1f} s later; series {series}")


def check_nothing_acknowledged_is_lost(agent, cases: list[Case], answers) -> int:
    """Every acknowledged SOP Instance is stored as its first acknowledged copy was sent;
    returns how many acknowledgements were conflicts (a later copy with other bytes)."""
    first: dict[str, bytes] = {}
    first_case: dict[str, str] = {}
    conflicts = 0
    for case in cases:
        if answers.get(case.name) != 0x0000:
            continue
        if case.sop_instance not in first:
            first[case.sop_instance] = case.dataset
            first_case[case.sop_instance] = case.name
        elif first[case.sop_instance] != case.dataset:
            conflicts += 1
    db = agent._db()
    try:
        rows = {r["sop_instance_uid"]: dict(r) for r in db.query("SELECT * FROM instances")}
    finally:
        db.close()
    for uid, dataset in first.items():
        assert uid in rows, f"acknowledged {uid} ({first_case[uid]}) is not in the index"
        stored = (agent.data_dir / rows[uid]["path"]).read_bytes()
        assert stored.endswith(dataset), f"stored bytes of {uid} are not the ones acknowledged"
    for row in rows.values():  # and the index names whole files only
        data = (agent.data_dir / row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
    return conflicts


def run_fuzz(tmp_path, model_path, rounds: int) -> None:
    cases = fuzz_cases(seed=0, rounds=rounds)
    assert len(cases) >= 500
    known = {case.name for case in cases}
    cases += [case for case in codec_panic_cases() if case.name not in known]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with running_agent(tmp_path / "run", model_path) as agent:
        pid = agent.process.pid
        started = time.monotonic()
        answers = send_cases(agent.port, cases, scratch)
        elapsed = time.monotonic() - started
        assert agent.alive() and agent.process.pid == pid, agent.log()[-3000:]

        unanswered = [c.name for c in cases if answers.get(c.name) is None]
        assert unanswered == []
        odd = {n: a for n, a in answers.items() if isinstance(a, int) and a not in STATUS_NAMES}
        assert odd == {}
        assert [n for n, a in answers.items() if a == "aborted"] == []

        conflicts = check_nothing_acknowledged_is_lost(agent, cases, answers)
        refused = sum(1 for a in answers.values() if a in REFUSED)
        status = agent.status()
        assert status["quarantine"]["conflicts"] == conflicts
        assert status["quarantined"] == refused + conflicts
        assert status["quarantine"]["evicted"] == 0

        # the pipeline digests every stored case without dying
        digest_started = time.monotonic()
        wait_for(
            lambda: (
                agent.status()["queues"]["inference"] == 0 and agent.status()["series"]["open"] == 0
            ),
            timeout=600,
            interval=1,
        )
        digest = time.monotonic() - digest_started
        assert agent.alive() and agent.process.pid == pid, agent.log()[-3000:]
        assert echoscu("-aec", "FTLCT", LOOPBACK, str(agent.port)).returncode == 0
        series = agent.status()["series"]
        print_table(outcome_table(cases, answers), elapsed, digest, series)
        print(f"conflicts kept first: {conflicts}; quarantined: {status['quarantined']}")


def test_hundreds_of_hostile_datasets_each_get_an_answer_and_lose_nothing(tmp_path, model_path):
    run_fuzz(tmp_path, model_path, rounds=1)


@pytest.mark.perf
@pytest.mark.timeout(3600)
def test_the_full_dicom_fuzz_run(tmp_path, model_path):
    run_fuzz(tmp_path, model_path, rounds=8)
