"""``POST /v1/witness/add-checkpoint``: this node as a C2SP tlog-witness.

Layer: node.api. The check-and-save runs on the database's writer thread
(:class:`~node.ledger.witness.Witness`, one ``BEGIN IMMEDIATE`` transaction);
the role check (``peer`` only) and the body cap are the middleware's.

Status codes, as c2sp.org/tlog-witness sets them:

=====  ==============================================================
200    the cosignature line(s), ``text/plain``
400    malformed body, or an old size above the checkpoint's size
403    the origin's key did not sign the checkpoint
404    this node does not follow (so does not witness) the origin
409    old size is not ours, or same size with another root: the body
       is our size and a newline, ``Content-Type: text/x.tlog.size``
422    the consistency proof does not verify
=====  ==============================================================

Errors other than 409 use the API's JSON error shape.
"""

from __future__ import annotations

import logging

from aiohttp import web

from node.api.handlers import error_response
from node.api.state import DB_KEY, HUB_KEY
from node.errors import UnknownLogError, WitnessConflictError, WitnessProofError
from node.ledger.service import Ledger
from node.ledger.witness import Cosigned
from protocol.errors import VerificationError
from protocol.witness import (
    MAX_REQUEST_BYTES,
    TLOG_SIZE_MEDIA_TYPE,
    AddCheckpointRequest,
    encode_size_body,
)

__all__ = ["MAX_BODY", "add_checkpoint"]

log = logging.getLogger("hashmesh.api")

MAX_BODY = MAX_REQUEST_BYTES
"""Largest add-checkpoint body accepted (413 above)."""


async def add_checkpoint(request: web.Request) -> web.Response:
    """``POST /v1/witness/add-checkpoint``: cosign a checkpoint of a followed origin."""
    if request.query:
        raise web.HTTPBadRequest(text="add-checkpoint takes no query parameters")
    # A malformed body raises MalformedError: the middleware answers 400.
    parsed = AddCheckpointRequest.from_bytes(await request.read())

    def run(ledger: Ledger) -> Cosigned:
        return ledger.witness().add_checkpoint(parsed.old_size, parsed.proof, parsed.note)

    try:
        cosigned = await request.app[DB_KEY].write(run)
    except WitnessConflictError as e:
        return web.Response(
            status=409,
            body=encode_size_body(e.size),
            headers={"Content-Type": TLOG_SIZE_MEDIA_TYPE},
        )
    except WitnessProofError as e:
        return error_response(422, str(e), "proof")
    except UnknownLogError as e:
        return error_response(404, str(e), "origin")
    except VerificationError as e:
        log.warning("refused to cosign: %s", e)
        return error_response(
            403, f"the checkpoint is not signed by its origin's key: {e}", "checkpoint"
        )
    log.info("cosigned %s at size %d", cosigned.origin, cosigned.size)
    if cosigned.relayed:
        # Followers that sync this origin through us and wait for our
        # cosignature fetch it now, not with the origin's next checkpoint.
        request.app[HUB_KEY].publish(cosigned.origin, cosigned.size)
    return web.Response(text=cosigned.line, content_type="text/plain", charset="utf-8")
