"""Least-privilege storage users: what workers and the dashboard may do in S3, and MinIO's setup.

Compose used to hand every service MinIO's root key, so a compromised worker (ffmpeg on hostile
input is the exposed part) could read, rewrite or delete anything, the audit trail included. Now
the root key is used once, by ``encodeq minio-setup`` (compose's one-shot ``minio-setup``
service): it creates the buckets, the two policies below and one user per role, and exits.

* ``encodeq-worker``: read sources, write chunk intermediates beside them (``<job>/chunks/``),
  read and write renditions, manifests and failure records; never the audit trail (an explicit
  Deny, so no later Allow can open it).
* ``encodeq-dashboard`` (``encodeq serve``): write sources and manifests (an upload), read
  everything the pages show (renditions to presign playback, failure records for the DLQ panel),
  append to the audit trail (replays and purges from the page), never delete it.

The policies are AWS IAM policy documents (MinIO's policy language is that subset); they are
built from the settings, so a bucket prefix is honoured. MinIO's admin API (users, policies) is
not S3: the minio SDK's ``MinioAdmin`` speaks it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from minio import Minio
from minio.credentials import StaticProvider
from minio.error import MinioAdminException, S3Error
from minio.minioadmin import MinioAdmin

from config.exposure import DefaultSecretError, check_default_secrets
from config.settings import Settings, get_settings
from console.terminal import fail, out
from core.layout import AUDIT, BUCKETS, FAILURES, JOBS, RENDITIONS, UPLOADS, chunks_prefix

#: Every bucket the project uses.
#: Writing an object, in one request or in parts.
WRITE = ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
READ = ["s3:GetObject"]
#: Finding a bucket and listing its keys.
LIST = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
WORKER, DASHBOARD = "encodeq-worker", "encodeq-dashboard"
#: MinIO answers this when a policy is already attached to the user: nothing to do.
ALREADY_ATTACHED = "XMinioAdminPolicyChangeAlreadyApplied"


class SetupError(Exception):
    """The storage could not be set up; the message says what failed."""


def _bucket_arn(settings: Settings, logical: str) -> str:
    return f"arn:aws:s3:::{settings.bucket(logical)}"


def _objects(settings: Settings, logical: str, pattern: str = "*") -> str:
    return f"{_bucket_arn(settings, logical)}/{pattern}"


def _statement(sid: str, actions: list[str], resources: list[str], effect: str = "Allow") -> dict:
    return {"Sid": sid, "Effect": effect, "Action": actions, "Resource": resources}


def worker_policy(settings: Settings) -> dict[str, Any]:
    """Workers: read uploads (and write their chunks), write renditions, jobs, failures."""
    outputs = (RENDITIONS, JOBS, FAILURES)
    return {
        "Version": "2012-10-17",
        "Statement": [
            _statement(
                "FindBuckets", LIST, [_bucket_arn(settings, b) for b in (UPLOADS, *outputs)]
            ),
            _statement("ReadSources", READ, [_objects(settings, UPLOADS)]),
            _statement(
                "ChunkIntermediates",
                [*READ, *WRITE, "s3:DeleteObject"],
                [_objects(settings, UPLOADS, chunks_prefix("*") + "*")],
            ),
            _statement(
                "WriteOutputs",
                [*READ, *WRITE, "s3:DeleteObject"],
                [_objects(settings, b) for b in outputs],
            ),
            _statement(
                "NeverTheAuditTrail",
                ["s3:*"],
                [_bucket_arn(settings, AUDIT), _objects(settings, AUDIT)],
                effect="Deny",
            ),
        ],
    }


def dashboard_policy(settings: Settings) -> dict[str, Any]:
    """The HTTP service: write uploads and jobs, read the rest, append to the audit trail."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            _statement("FindBuckets", LIST, [_bucket_arn(settings, b) for b in BUCKETS]),
            _statement("ReadEverything", READ, [_objects(settings, b) for b in BUCKETS]),
            _statement(
                "WriteUploadsAndJobs",
                [*WRITE, "s3:DeleteObject"],
                [_objects(settings, UPLOADS), _objects(settings, JOBS)],
            ),
            _statement("AppendAudit", WRITE, [_objects(settings, AUDIT)]),
            _statement(
                "KeepTheAuditTrail",
                ["s3:DeleteObject", "s3:DeleteBucket", "s3:PutBucketPolicy"],
                [_bucket_arn(settings, AUDIT), _objects(settings, AUDIT)],
                effect="Deny",
            ),
        ],
    }


#: Role name -> policy builder.
POLICIES: dict[str, Callable[[Settings], dict[str, Any]]] = {
    WORKER: worker_policy,
    DASHBOARD: dashboard_policy,
}


def users(settings: Settings) -> dict[str, tuple[str, str]]:
    """Role -> (access key, secret key) from the settings; a role without a secret is skipped."""
    wanted = {
        WORKER: (settings.worker_s3_access_key, settings.worker_s3_secret_key),
        DASHBOARD: (settings.dashboard_s3_access_key, settings.dashboard_s3_secret_key),
    }
    return {role: keys for role, keys in wanted.items() if keys[0] and keys[1]}


def setup(settings: Settings, log: Callable[[str], None] = print) -> None:
    """Create the buckets, the policies and the users (idempotent: run it at every start).

    Runs with the root credentials (``ENCODEQ_S3_ACCESS_KEY``/``SECRET_KEY``); refuses MinIO's
    well-known root key off loopback (``DefaultSecretError``) before anything is done."""
    check_default_secrets(settings)
    wanted = users(settings)
    missing = sorted(set(POLICIES) - set(wanted))
    if missing:
        raise SetupError(
            f"no credentials for {', '.join(missing)}: set ENCODEQ_WORKER_S3_ACCESS_KEY/"
            "_SECRET_KEY and ENCODEQ_DASHBOARD_S3_ACCESS_KEY/_SECRET_KEY"
        )
    endpoint = urlsplit(settings.s3_endpoint)
    secure = endpoint.scheme == "https"
    client = Minio(
        endpoint.netloc,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        region=settings.s3_region,
        secure=secure,
    )
    for logical in BUCKETS:
        name = settings.bucket(logical)
        try:
            if not client.bucket_exists(name):
                client.make_bucket(name)
                log(f"bucket {name}: created")
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise SetupError(f"bucket {name}: {exc.code}: {exc.message}") from exc
    admin = MinioAdmin(
        endpoint=endpoint.netloc,
        credentials=StaticProvider(settings.s3_access_key, settings.s3_secret_key),
        region=settings.s3_region,
        secure=secure,
    )
    try:
        for role, build in POLICIES.items():
            access_key, secret_key = wanted[role]
            admin.policy_add(role, policy=build(settings))
            admin.user_add(access_key, secret_key)
            try:
                admin.attach_policy([role], user=access_key)
            except MinioAdminException as exc:
                if ALREADY_ATTACHED not in str(exc):
                    raise
            log(f"user {access_key}: policy {role}")
    except (MinioAdminException, S3Error, ValueError) as exc:
        raise SetupError(
            f"the MinIO admin API at {settings.s3_endpoint} refused or does not exist: {exc}"
        ) from exc


def command() -> None:
    """With MinIO's root key: create the buckets and the least-privilege users of the workers
    and the dashboard (ENCODEQ_WORKER_S3_*, ENCODEQ_DASHBOARD_S3_*). Compose runs it once."""
    try:
        setup(get_settings(), log=lambda line: out.print(line, markup=False, highlight=False))
    except DefaultSecretError as exc:
        fail(str(exc))
    except SetupError as exc:
        fail(str(exc), code=1)
