"""Amazon SES through SNS: `Bounce` and `Complaint` notifications.

SES publishes to an SNS topic, and SNS posts to `/hooks/ses`. SNS signs every message
with RSA (SignatureVersion 1: SHA1, 2: SHA256) over its documented "string to sign",
with the certificate at `SigningCertURL`. That certificate is AWS's for every topic of
every customer, so a valid signature alone proves only that *some* SNS topic sent it:
the message's `TopicArn` must also be one the seller named (the setting,
`AUTOFUNNEL_SES_TOPIC_ARN`, comma-separated), or anyone's own topic could bounce our
leads.

The certificate URL must be https on `sns.<region>.amazonaws.com` (or `.amazonaws.com.cn`)
and end in `.pem`; it is fetched once per process and URL and kept (`CertificateCache`),
or read from `AUTOFUNNEL_SES_SIGNING_CERT_DIR` when a file of that name is there (a
machine without outbound network, or one that should never fetch).

A `SubscriptionConfirmation` (what SNS sends first when the seller subscribes the URL)
is confirmed by fetching its `SubscribeURL` only when `AUTOFUNNEL_SES_CONFIRM_SUBSCRIPTIONS`
is true and the topic is allowed; otherwise the URL is logged, for the seller to open by
hand or confirm in the AWS console.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from autofunnel.errors import HookRejected, HookUnavailable, InvalidInputError
from autofunnel.services.hooks import Ignored, PurchaseLookup, Request, checked_email, decode_json, event, moment
from autofunnel.services.inputs import EventInput

if TYPE_CHECKING:
    from autofunnel.services.runtime import Runtime

log = logging.getLogger(__name__)

SETTING = "ses_topic_arn"
USES_RUNTIME = True

_SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
_SIGNED_KEYS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
MAX_CERTIFICATE = 64 * 1024

Fetch = Callable[[str], bytes]


def https_fetch(url: str) -> bytes:
    """GET an SNS URL (already checked to be https on an SNS host), at most 64 KiB, in 10 s."""
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 — the scheme and host were checked
        return bytes(answer.read(MAX_CERTIFICATE))


def sns_url(url: Any, *, certificate: bool) -> str:
    """The URL if it is one SNS would send (https, an SNS host, a .pem for a certificate); else a refusal."""
    field = "SigningCertURL" if certificate else "SubscribeURL"
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
        ok = parts is not None and parts.scheme == "https" and bool(_SNS_HOST.match(parts.hostname or "")) and parts.port in (None, 443) \
            and not parts.username and not parts.password and (not certificate or parts.path.endswith(".pem"))
    except ValueError:  # a port that is no number, a broken IPv6 host
        ok = False
    if not ok:
        raise HookRejected(f"the {field} is not an https URL on an sns.<region>.amazonaws.com host", field=field)
    return str(url)


class CertificateCache:
    """SNS signing certificates by URL: from the folder when there, else fetched once and kept."""

    def __init__(self, fetch: Fetch = https_fetch, folder: str | None = None, size: int = 16) -> None:
        self.fetch = fetch
        self.folder = Path(folder) if folder else None
        self.size = size
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._lock = threading.Lock()

    def public_key(self, url: str) -> rsa.RSAPublicKey:
        with self._lock:
            key = self._keys.get(url)
        if key is not None:
            return key
        key = self._load(url)
        with self._lock:
            if len(self._keys) >= self.size:
                self._keys.pop(next(iter(self._keys)))
            self._keys[url] = key
        return key

    def _load(self, url: str) -> rsa.RSAPublicKey:
        name = Path(urlsplit(url).path).name
        seeded = self.folder / name if self.folder is not None and name else None
        try:
            pem = seeded.read_bytes() if seeded is not None and seeded.is_file() else self.fetch(url)
        except OSError as exc:
            log.warning("could not get the SNS signing certificate %s: %s", url, exc)
            raise HookUnavailable("the SNS signing certificate could not be fetched (SNS retries; or put it in "
                                  "AUTOFUNNEL_SES_SIGNING_CERT_DIR)", "ses_signing_cert_dir") from None
        try:
            key = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError:
            raise HookRejected("the SNS signing certificate is not a PEM certificate", field="SigningCertURL") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise HookRejected("the SNS signing certificate does not hold an RSA key", field="SigningCertURL")
        return key


def _message(request: Request) -> dict[str, Any]:
    try:
        body = decode_json(request.raw)
    except InvalidInputError:
        body = None
    if not isinstance(body, dict) or body.get("Type") not in _SIGNED_KEYS:
        raise HookRejected("the body is not an SNS message", field="Type")
    return body


def string_to_sign(message: dict[str, Any]) -> bytes:
    """SNS's documented string to sign: each signed key present, in order, as `key\\nvalue\\n`."""
    keys = _SIGNED_KEYS[message["Type"]]
    return "".join(f"{key}\n{message[key]}\n" for key in keys if isinstance(message.get(key), str)).encode()


def _topics(secret: str) -> set[str]:
    return {part.strip() for part in secret.split(",") if part.strip()}


def verify(request: Request, secret: str, now: datetime, *, rt: Runtime) -> None:
    message = _message(request)
    if message.get("TopicArn") not in _topics(secret):
        raise HookRejected("the message's TopicArn is not in AUTOFUNNEL_SES_TOPIC_ARN", field="TopicArn")
    digest = _HASHES.get(str(message.get("SignatureVersion")))
    if digest is None:
        raise HookRejected("SignatureVersion must be 1 or 2", field="SignatureVersion")
    try:
        signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
    except (ValueError, binascii.Error):
        raise HookRejected("the Signature is not base64", field="Signature") from None
    key = rt.sns_certificates.public_key(sns_url(message.get("SigningCertURL"), certificate=True))
    try:
        key.verify(signature, string_to_sign(message), padding.PKCS1v15(), digest())
    except InvalidSignature:
        raise HookRejected("the SNS signature does not match its signing certificate", field="Signature") from None


def to_events(request: Request, now: datetime, find_purchase: PurchaseLookup, *, rt: Runtime) -> list[EventInput] | Ignored:
    message = _message(request)
    if message["Type"] == "SubscriptionConfirmation":
        return _confirm(rt, message)
    if message["Type"] != "Notification":
        return Ignored(f"SNS {message['Type']}")
    try:
        notification = decode_json(str(message.get("Message", "")).encode())
    except InvalidInputError:
        return Ignored("an SNS notification whose Message is not SES JSON")
    if not isinstance(notification, dict):
        return Ignored("an SNS notification whose Message is not SES JSON")
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = notification.get("mail") if isinstance(notification.get("mail"), dict) else {}
    base = {"relay": "ses", "message_id": mail.get("messageId")}
    if kind == "Bounce" and isinstance(notification.get("bounce"), dict):
        bounce = notification["bounce"]
        hard = bounce.get("bounceType") == "Permanent"  # Transient and Undetermined may still take mail later
        properties = {**base, "kind": "hard" if hard else "soft", "reason": f"{bounce.get('bounceType')}/{bounce.get('bounceSubType')}"}
        return _per_recipient("bounced", bounce, "bouncedRecipients", message, properties, now) or Ignored("an SES bounce without recipients")
    if kind == "Complaint" and isinstance(notification.get("complaint"), dict):
        complaint = notification["complaint"]
        properties = {**base, "feedback_type": complaint.get("complaintFeedbackType")}
        return _per_recipient("complained", complaint, "complainedRecipients", message, properties, now) or Ignored("an SES complaint without recipients")
    return Ignored(f"SES notification {kind!r} is not handled")


def _per_recipient(kind: str, block: dict[str, Any], recipients_key: str, message: dict[str, Any], properties: dict[str, Any],
                   now: datetime) -> list[EventInput]:
    """One event per recipient, keyed by SES's feedback id (its id for this bounce or complaint) and the address."""
    feedback = block.get("feedbackId") if isinstance(block.get("feedbackId"), str) else message.get("MessageId")
    at = moment(block.get("timestamp"))
    events = []
    recipients = block.get(recipients_key) if isinstance(block.get(recipients_key), list) else []
    for recipient in recipients:
        email = checked_email(recipient.get("emailAddress")) if isinstance(recipient, dict) else None
        if email is None:
            continue
        detail = {**properties, "diagnostic": recipient.get("diagnosticCode")}
        events.append(event(kind, f"ses:{feedback}:{email}", at, now, _clean(detail), email=email))
    return events


def _confirm(rt: Runtime, message: dict[str, Any]) -> Ignored:
    url = sns_url(message.get("SubscribeURL"), certificate=False)
    if parse_qs(urlsplit(url).query).get("Action") != ["ConfirmSubscription"]:
        raise HookRejected("the SubscribeURL does not confirm a subscription", field="SubscribeURL")
    if not rt.settings.ses_confirm_subscriptions:
        log.warning("SNS asks to confirm the subscription of %s to /hooks/ses; open this URL to confirm it "
                    "(or set AUTOFUNNEL_SES_CONFIRM_SUBSCRIPTIONS=true): %s", message.get("TopicArn"), url)
        return Ignored("subscription confirmation logged, not confirmed (AUTOFUNNEL_SES_CONFIRM_SUBSCRIPTIONS is off)")
    try:
        rt.sns_certificates.fetch(url)
    except OSError as exc:
        log.warning("could not confirm the SNS subscription of %s: %s", message.get("TopicArn"), exc)
        raise HookUnavailable("the subscription could not be confirmed now; SNS sends the confirmation again",
                              "ses_confirm_subscriptions") from None
    log.info("confirmed the SNS subscription of %s to /hooks/ses", message.get("TopicArn"))
    return Ignored("subscription confirmed")


def _clean(properties: dict[str, Any]) -> dict[str, Any]:
    return {k: v[:500] if isinstance(v, str) else v for k, v in properties.items() if isinstance(v, str) and v}
