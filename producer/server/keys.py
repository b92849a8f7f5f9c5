"""API keys: created and revoked from the CLI, kept as SHA-256 digests (a key is a random
256-bit secret, so a plain digest is enough: there is nothing to guess), shown once."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from schemas import db
from schemas.errors import ConfigError
from schemas.tables import ApiKey, utcnow

PREFIX = "ns-"


@dataclass(frozen=True)
class Caller:
    """Who a request is from: its key's id, and whether it sees everyone's batches."""

    key_id: str
    admin: bool

    def owns(self, owner: str | None) -> bool:
        return self.admin or owner == self.key_id


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(db_url: str, name: str, *, admin: bool = False) -> str:
    """A new key named `name`; returns the key itself, which is not kept."""
    key = PREFIX + secrets.token_urlsafe(32)
    try:
        with db.session(db_url) as session, session.begin():
            session.add(ApiKey(id=uuid.uuid4().hex, name=name, digest=digest(key), admin=admin))
    except IntegrityError:
        raise ConfigError(f"a key named {name!r} exists already (nightshift keys list)") from None
    return key


def revoke(db_url: str, name: str) -> bool:
    """False when no live key has that name."""
    with db.session(db_url) as session, session.begin():
        key = session.scalar(select(ApiKey).where(ApiKey.name == name,
                                                  ApiKey.revoked_at.is_(None)))
        if key is None:
            return False
        key.revoked_at = utcnow()
    return True


def listed(db_url: str) -> list[dict[str, Any]]:
    with db.reader(db_url) as session:
        keys = session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()
    return [{"name": k.name, "admin": k.admin, "created_at": k.created_at.isoformat(),
             "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None} for k in keys]


def name_of(db_url: str, key_id: str) -> str:
    with db.reader(db_url) as session:
        return str(session.scalar(select(ApiKey.name).where(ApiKey.id == key_id)))


def authenticate(db_url: str, key: str) -> Caller | None:
    with db.reader(db_url) as session:
        found = session.execute(select(ApiKey.id, ApiKey.admin).where(
            ApiKey.digest == digest(key), ApiKey.revoked_at.is_(None))).first()
    return Caller(found.id, found.admin) if found else None
