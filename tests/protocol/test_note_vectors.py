"""Our own signed-note vectors, fixed seeds, guarded against drift.

The shared vectors come from Go's sumdb/note, which predates
tlog-cosignature/v1; these add cosigned checkpoints (type 0x04) and notes with
several signatures and extension lines. Any change to the bytes we produce
fails ``test_generated_vectors_have_not_drifted``: if the change is intended,
regenerate with ``python -m tests.protocol.test_note_vectors`` and say why in
the commit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from protocol.checkpoint import Checkpoint, cosign_checkpoint, open_checkpoint, sign_checkpoint
from protocol.keys import SIG_COSIGNATURE_V1, NoteSigner, NoteVerifier

VECTORS = Path(__file__).with_name("vectors") / "notes_generated.json"

LOG_SEED = bytes(range(32))
COSIGNER_SEEDS = {
    "witness-1.example": bytes(range(32, 64)),
    "witness-2.example": bytes(range(64, 96)),
}
ORIGIN = "hotline-a.example/hashmesh"


def generate() -> dict[str, Any]:
    """Deterministic notes: every byte depends only on the seeds above."""
    log = NoteSigner.from_seed(ORIGIN, LOG_SEED)
    cosigners = [
        NoteSigner.from_seed(name, seed, SIG_COSIGNATURE_V1)
        for name, seed in COSIGNER_SEEDS.items()
    ]
    cases = []
    for size, extensions in [(0, ()), (1, ()), (7, ()), (1_000_000, ("ext-a", "ext b"))]:
        root = hashlib.sha256(b"root %d" % size).digest()
        checkpoint = Checkpoint(origin=ORIGIN, size=size, root_hash=root, extensions=extensions)
        note = sign_checkpoint(checkpoint, log)
        cosigned = note
        for i, cosigner in enumerate(cosigners):
            cosigned = cosign_checkpoint(cosigned, cosigner, 1_700_000_000 + size + i)
        cases.append({"size": size, "signed_note": note, "cosigned_note": cosigned})
    return {
        "about": "hashmesh-generated signed-note and tlog-cosignature/v1 vectors "
        "(tests/protocol/test_note_vectors.py)",
        "log_vkey": log.verifier().to_text(),
        "cosigner_vkeys": [c.verifier().to_text() for c in cosigners],
        "cases": cases,
    }


def test_generated_vectors_have_not_drifted() -> None:
    stored = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert stored == generate()


def test_generated_vectors_verify() -> None:
    stored = json.loads(VECTORS.read_text(encoding="utf-8"))
    log = NoteVerifier.from_text(stored["log_vkey"])
    cosigners = [NoteVerifier.from_text(k) for k in stored["cosigner_vkeys"]]
    assert len(stored["cases"]) == 4
    for case in stored["cases"]:
        plain = open_checkpoint(case["signed_note"], log)
        assert plain.checkpoint.size == case["size"]
        both = open_checkpoint(case["cosigned_note"], log, witnesses=cosigners, witness_threshold=2)
        assert both.checkpoint == plain.checkpoint
        assert sorted(both.cosignatures.values()) == [
            1_700_000_000 + case["size"],
            1_700_000_001 + case["size"],
        ]


if __name__ == "__main__":
    VECTORS.parent.mkdir(exist_ok=True)
    VECTORS.write_text(json.dumps(generate(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {VECTORS}")


def test_cosignatures_verify_with_an_independent_ed25519() -> None:
    """Rebuild each cosigned message from the spec text and verify it with pyca/cryptography."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    stored = json.loads(VECTORS.read_text(encoding="utf-8"))
    keys = {}
    for vkey in stored["cosigner_vkeys"]:
        name, key_id, b64 = vkey.split("+", 2)
        raw = base64.b64decode(b64)
        assert raw[0] == 0x04
        keys[(name, int(key_id, 16))] = Ed25519PublicKey.from_public_bytes(raw[1:])
    checked = 0
    for case in stored["cases"]:
        text, sigs = case["cosigned_note"].split("\n\n")
        for line in sigs.splitlines()[1:]:
            name, b64 = line.removeprefix("\u2014 ").split(" ")
            raw = base64.b64decode(b64)
            timestamp = int.from_bytes(raw[4:12], "big")
            message = f"cosignature/v1\ntime {timestamp}\n{text}\n".encode()
            keys[(name, int.from_bytes(raw[:4], "big"))].verify(raw[12:], message)
            checked += 1
    assert checked == 8
