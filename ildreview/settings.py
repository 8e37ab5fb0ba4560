"""Settings for ildreview, driven by environment variables.

Every setting has a local default that just works (SQLite, a local media folder, an embedded
Celery broker); production and CI override them through the environment, documented one per
line in `.env.example`. Test-only overrides live in `tests/conftest.py`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import environ

from ildreview.broker import filesystem_transport_options

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("ILDREVIEW_VAR_DIR", BASE_DIR / "var"))

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=True)


def _secret_key() -> str:
    """SECRET_KEY from the environment; in DEBUG a development key."""
    key = env.str("SECRET_KEY", default="")
    if key:
        return key
    if not DEBUG:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    # Settings import writes no file: the key that `scripts/run_local.sh` keeps in an ignored
    # file when there is one (sessions outlive restarts), else a key of this process only.
    path = BASE_DIR / ".local-secret-key"
    if path.exists():
        return path.read_text().strip()
    return secrets.token_urlsafe(50)


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "csp",
    "ildreview.apps.IldreviewConfig",
    "cases",
    "retrieval",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files straight after the security headers, before sessions and the database.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "ildreview.middleware.NoStoreMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Before anything parses a multipart body: keeps files with non-UTF-8 names.
    "cases.middleware.UploadFileNameMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "ildreview.middleware.LoginRequiredMiddleware",
    # AxesMiddleware must be last (django-axes docs).
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "ildreview.urls"
WSGI_APPLICATION = "ildreview.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
DATABASES["default"].setdefault("ATOMIC_REQUESTS", False)
# SQLite under concurrent requests: WAL lets readers run while one connection writes; IMMEDIATE
# takes the write lock at BEGIN, so a transaction never fails half-way with "database is
# locked" when it upgrades a read lock; the busy timeout (seconds) makes writers wait their turn.
# Options given in DATABASE_URL (e.g. `?timeout=60`) win.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    _sqlite_options = DATABASES["default"].setdefault("OPTIONS", {})
    _sqlite_options.setdefault("transaction_mode", "IMMEDIATE")
    _sqlite_options.setdefault("timeout", env.float("SQLITE_BUSY_TIMEOUT_S", default=30.0))
    _sqlite_options.setdefault(
        "init_command", "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "cases:worklist"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_URL = "media/"
MEDIA_ROOT = env.path("MEDIA_ROOT", default=BASE_DIR / "media")
# Stored files (slice pixels, DICOM copies, overlays) are read and written only through Django's
# storage API and served by id (cases/api/files.py), never from MEDIA_URL. Default: the local
# MEDIA_ROOT folder. A deployment whose workers run on other machines names a shared backend,
# e.g. S3-compatible storage through django-storages (installed separately), with its options
# as JSON (see .env.example and the README).
STORAGES = {
    "default": {
        "BACKEND": env.str(
            "MEDIA_STORAGE_BACKEND", default="django.core.files.storage.FileSystemStorage"
        ),
        "OPTIONS": env.json("MEDIA_STORAGE_OPTIONS", default={}),
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Upload limits: the whole request, one file, and what a zip may expand to.
ILDREVIEW_MAX_UPLOAD_BYTES = env.int("ILDREVIEW_MAX_UPLOAD_BYTES", default=1024 * 1024 * 1024)
ILDREVIEW_MAX_ZIP_EXPANDED_BYTES = env.int(
    "ILDREVIEW_MAX_ZIP_EXPANDED_BYTES", default=4 * 1024 * 1024 * 1024
)
ILDREVIEW_MAX_ZIP_FILES = env.int("ILDREVIEW_MAX_ZIP_FILES", default=20000)
# Resource limits checked from the DICOM header before any pixel data is decoded
# (cases/dicom/reading.py): one file (and a deflated one once inflated), one image
# (Rows x Columns x frames x bits), the decoded images of one upload, and the decoded images
# a user's studies may hold in all (0: no quota).
ILDREVIEW_MAX_DICOM_FILE_BYTES = env.int("ILDREVIEW_MAX_DICOM_FILE_BYTES", default=32 * 1024**2)
ILDREVIEW_MAX_IMAGE_BYTES = env.int("ILDREVIEW_MAX_IMAGE_BYTES", default=8 * 1024**2)
ILDREVIEW_MAX_UPLOAD_DECODED_BYTES = env.int(
    "ILDREVIEW_MAX_UPLOAD_DECODED_BYTES", default=2 * 1024**3
)
ILDREVIEW_USER_QUOTA_DECODED_BYTES = env.int(
    "ILDREVIEW_USER_QUOTA_DECODED_BYTES", default=50 * 1024**3
)
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=10 * 1024 * 1024)
DATA_UPLOAD_MAX_NUMBER_FILES = env.int("DATA_UPLOAD_MAX_NUMBER_FILES", default=5000)
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# Secret key of the pseudonyms (HMAC-SHA256 of the source PatientID and of every DICOM UID;
# the raw values are never stored). The development default is refused by `check --deploy`
# when DEBUG is off (cases.checks); changing it later gives new studies new pseudonyms.
ILDREVIEW_PSEUDONYM_DEV_KEY = "ildreview-development-pseudonym-key-not-secret"
ILDREVIEW_PSEUDONYM_KEY = env.str("ILDREVIEW_PSEUDONYM_KEY", default=ILDREVIEW_PSEUDONYM_DEV_KEY)
# Folder of the real public datasets used by tests and benchmarks when present.
ILDREVIEW_REAL_DATA = env.path(
    "ILDREVIEW_REAL_DATA", default=BASE_DIR.parent / "shared" / "datasets"
)

# Retrieval engine.
ILDREVIEW_BACKBONE = env.str("ILDREVIEW_BACKBONE", default="efficientnet_lite0")
ILDREVIEW_RESNET50_WEIGHTS = env.str("ILDREVIEW_RESNET50_WEIGHTS", default="")
ILDREVIEW_MODEL_DIR = env.path("ILDREVIEW_MODEL_DIR", default=VAR_DIR / "models")
ILDREVIEW_MIN_LUNG_FRACTION = env.float("ILDREVIEW_MIN_LUNG_FRACTION", default=0.05)
# Physical field of view (mm) that DICOM slices are resampled to before preparation
# (retrieval/engine/geometry.py), so that every scanner's slices show the same millimetres per
# pixel. Recorded in each model trained from then on; a model keeps its own value.
# 0 / empty: slices are resized whole.
ILDREVIEW_FOV_MM = env.float("ILDREVIEW_FOV_MM", default=0.0) or None

# Celery: Redis when CELERY_BROKER_URL is set; otherwise kombu's filesystem transport under
# var/broker so that a local install needs no broker (folders made when first needed,
# ildreview/broker.py).
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_transport_options(folder=VAR_DIR / "broker")
else:
    # Redis redelivers a dead worker's unacknowledged message after this many seconds; it must
    # exceed the longest task's hard time limit (see retrieval/tasks.py). Lost work is picked up
    # sooner by the workers' own recovery sweep (retrieval/pipeline/recovery.py).
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=7200)
    }
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# Pipeline (retrieval/pipeline/): index backend, results per study, time limits and recovery.
# An empty value means the default too.
ILDREVIEW_INDEX_BACKEND = env.str("ILDREVIEW_INDEX_BACKEND", default="lsh") or "lsh"
# recall@10 the "lsh" backend is tuned to reach on held-out library vectors when it is built
# (retrieval/engine/index/tune.py); below it, the build falls back to exact or faiss-hnsw.
ILDREVIEW_INDEX_TARGET_RECALL = env.float("ILDREVIEW_INDEX_TARGET_RECALL", default=0.95)
ILDREVIEW_RESULTS_TOP_K = env.int("ILDREVIEW_RESULTS_TOP_K", default=8)
ILDREVIEW_STAGE_SOFT_TIME_LIMIT_S = env.int("ILDREVIEW_STAGE_SOFT_TIME_LIMIT_S", default=1200)
ILDREVIEW_LONG_SOFT_TIME_LIMIT_S = env.int("ILDREVIEW_LONG_SOFT_TIME_LIMIT_S", default=3600)
ILDREVIEW_STALE_AFTER_S = env.int("ILDREVIEW_STALE_AFTER_S", default=300)
ILDREVIEW_QUEUED_STALE_AFTER_S = env.int("ILDREVIEW_QUEUED_STALE_AFTER_S", default=3600)
ILDREVIEW_RECOVERY_INTERVAL_S = env.int("ILDREVIEW_RECOVERY_INTERVAL_S", default=60)
# A CAM job lost with a killed worker (Redis keeps an unacknowledged message for the visibility
# timeout, hours) is sent again by the recovery sweep once its result is this old and still has
# no overlay; a repeated CAM job is a no-op, so a slow queue only costs a duplicate message.
ILDREVIEW_CAM_RESEND_AFTER_S = env.int("ILDREVIEW_CAM_RESEND_AFTER_S", default=300)
# A study still "uploaded" this long after its last change (its upload committed, but it was
# never queued) is queued by the recovery sweep.
ILDREVIEW_UPLOADED_GRACE_S = env.int("ILDREVIEW_UPLOADED_GRACE_S", default=300)
# Fair queue (retrieval/pipeline/enqueue.py): runs sent to the broker and unfinished per user
# (the others wait in the database), and the worker slots the queue estimate divides by.
ILDREVIEW_QUEUE_PER_USER = env.int("ILDREVIEW_QUEUE_PER_USER", default=1)
ILDREVIEW_QUEUE_WORKERS = env.int("ILDREVIEW_QUEUE_WORKERS", default=1)
# Torch intra-op threads per worker process: 1 by default, because several processes (web,
# worker, other workers) share the CPU and oversubscribed OpenMP threads are up to 20x slower.
ILDREVIEW_TORCH_THREADS = env.int("ILDREVIEW_TORCH_THREADS", default=1)
# Slices embedded per forward pass when a study or reference case is embedded (memory vs speed).
ILDREVIEW_EMBED_BATCH = env.int("ILDREVIEW_EMBED_BATCH", default=8)
# Prepared slices (windowed image + lung mask, about 1.3 MB each at 512 px) a worker process
# keeps, so that the embed stage and the CAM jobs do not load and segment them again.
ILDREVIEW_PREPARED_CACHE_SLICES = env.int("ILDREVIEW_PREPARED_CACHE_SLICES", default=192)
# Whether the prepare stage also computes the embeddings, running the backbone in a thread
# while the lung masks and radiomics are computed (the embed stage then has nothing left to
# do): "auto" when this worker also serves the gpu queue (one machine for both), "true",
# "false" (keep the network work on the gpu queue's workers).
ILDREVIEW_PREPARE_EMBEDS = env.str("ILDREVIEW_PREPARE_EMBEDS", default="auto")
# Load the active model in each worker process when it starts, not at its first study.
ILDREVIEW_WORKER_WARM_UP = env.bool("ILDREVIEW_WORKER_WARM_UP", default=True)
# `manage.py bootstrap_model`: backbone weights ("imagenet", "random" for tests, or a file),
# image size and epochs of the head-only model trained on the approved library.
ILDREVIEW_BOOTSTRAP_WEIGHTS = env.str("ILDREVIEW_BOOTSTRAP_WEIGHTS", default="imagenet")
ILDREVIEW_BOOTSTRAP_SIZE = env.int("ILDREVIEW_BOOTSTRAP_SIZE", default=512)
ILDREVIEW_BOOTSTRAP_EPOCHS = env.int("ILDREVIEW_BOOTSTRAP_EPOCHS", default=20)
ILDREVIEW_BOOTSTRAP_REDUCE_DEEP = env.str("ILDREVIEW_BOOTSTRAP_REDUCE_DEEP", default="auto")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 25,
    # Documents the error statuses of every operation (cases/api/schema.py).
    "DEFAULT_SCHEMA_CLASS": "cases.api.schema.ApiAutoSchema",
    # JSON bodies (JSON only: form encodings cannot carry null); nested deeper than
    # ILDREVIEW_MAX_JSON_DEPTH they are refused with 400. Upload and token views add theirs.
    "DEFAULT_PARSER_CLASSES": ["cases.api.parsers.DepthLimitedJSONParser"],
}
# Deepest nesting of arrays/objects accepted in a JSON request body.
ILDREVIEW_MAX_JSON_DEPTH = env.int("ILDREVIEW_MAX_JSON_DEPTH", default=64)
SPECTACULAR_SETTINGS = {
    "TITLE": "ildreview API",
    "DESCRIPTION": "Upload lung CT studies, read similar-case results, label and approve cases.",
    "VERSION": "1.0.0",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Failed-login throttling (login page and token endpoint; ildreview/auth.py). Failures count
# per username+address combination: one account's failures never lock another account, nor
# everyone behind one NAT or proxy. A success resets only that combination's failures.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.5)
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_LOCKOUT_TEMPLATE = "registration/lockout.html"
AXES_LOCKOUT_CALLABLE = "ildreview.auth.lockout_response"
AXES_CLIENT_IP_CALLABLE = "ildreview.auth.client_ip_address"
# Reverse proxies in front of the app that append to X-Forwarded-For; 0 trusts no forwarded
# header (the client address is the connection's).
ILDREVIEW_TRUSTED_PROXY_COUNT = env.int("ILDREVIEW_TRUSTED_PROXY_COUNT", default=0)

# Security; `manage.py check --deploy` is clean with DEBUG off and HTTPS settings on.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp): scripts, styles, images, frames and requests from this
# origin only, and no inline script, style or event handler (static/page.js sets bar widths and
# asks confirmations). The API docs relax styles only (ildreview/api_urls.py); the model report
# file sends its own stricter policy (retrieval/views.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        # blob: the review viewer's (Cornerstone3D) tool cursors are SVG images it makes itself.
        "img-src": ["'self'", "blob:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
# A session ends after SESSION_IDLE_HOURS without a request: every request renews the cookie.
SESSION_COOKIE_AGE = round(env.float("SESSION_IDLE_HOURS", default=8.0) * 3600)
SESSION_SAVE_EVERY_REQUEST = True
# Static files are served by WhiteNoise (MIDDLEWARE). With ILDREVIEW_STATIC_MANIFEST (default:
# DEBUG off) they are the hashed, compressed copies that `collectstatic` writes, which browsers
# may cache for a year; without it (DEBUG, tests) the plain files, found without collectstatic.
STORAGES["staticfiles"] = {
    "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
    if env.bool("ILDREVIEW_STATIC_MANIFEST", default=not DEBUG)
    else "whitenoise.storage.CompressedStaticFilesStorage"
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}
