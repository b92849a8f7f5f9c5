"""The dashboard's logins: a browser gives an API key once and gets a cookie holding a
random token, kept in SQL as its SHA-256 (every server agrees; revoking the key ends the
login). Forms carry a token derived from the login's (`form_token`): another site's page
can make the browser post, but cannot read the token to post with it."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import delete, select

from producer.server import keys
from schemas import db
from schemas.tables import ApiKey, Login, utcnow

COOKIE = "nightshift_login"
LASTS = timedelta(days=7)


def start(db_url: str, key: str) -> str | None:
    """A new login's token, or None when the key is not a live one."""
    caller = keys.authenticate(db_url, key)
    if caller is None:
        return None
    token = secrets.token_urlsafe(32)
    with db.session(db_url) as session, session.begin():
        session.execute(delete(Login).where(Login.expires_at < utcnow()))  # the ended ones
        session.add(Login(digest=keys.digest(token), key_id=caller.key_id,
                          expires_at=utcnow() + LASTS))
    return token


def caller(db_url: str, token: str | None) -> keys.Caller | None:
    """Who a cookie's token logged in as, while the login and its key are live."""
    if not token:
        return None
    with db.reader(db_url) as session:
        found = session.execute(
            select(ApiKey.id, ApiKey.admin).join(Login, Login.key_id == ApiKey.id)
            .where(Login.digest == keys.digest(token), Login.expires_at > utcnow(),
                   ApiKey.revoked_at.is_(None))).first()
    return keys.Caller(found.id, found.admin) if found else None


def end(db_url: str, token: str) -> None:
    with db.session(db_url) as session, session.begin():
        session.execute(delete(Login).where(Login.digest == keys.digest(token)))


def form_token(token: str) -> str:
    return hashlib.sha256(b"form:" + token.encode()).hexdigest()


def form_ok(token: str | None, given: str | None) -> bool:
    return bool(token and given) and hmac.compare_digest(form_token(token or ""), given or "")
