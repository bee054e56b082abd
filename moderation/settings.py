"""The library's settings: what `moderation/` reads (the model, images, policies, embeddings, media, the database).

Each group is a frozen pydantic model, so the library can be configured in code without the environment.
The runtime (consumers/settings.py) nests these groups into the one `Settings` read from the environment
with the prefix ``MODERATION_``, beside the groups only the runtime uses (Kafka, batching, ops, logs).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

MASK = "**********"
_SECRET_QUERY_KEYS = {"password", "sslpassword", "passwd", "pwd"}


class SettingsGroup(BaseModel):
    """One group of settings (one ``MODERATION_<GROUP>__`` prefix): frozen, and no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DatabaseSettings(SettingsGroup):
    url: SecretStr | None = Field(
        None, description="SQLAlchemy URL; default: a SQLite file in the data directory."
    )


class ModelSettings(SettingsGroup):
    name_or_path: str = Field(
        "openai/clip-vit-base-patch32",
        description="Local checkpoint directory or a hub id already in the local Hugging Face cache.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA with fp16 when available, else CPU fp32."
    )
    cpu_mode: Literal["fp32", "int8"] = Field(
        "fp32", description="CPU only: int8 dynamic quantisation of the linear layers (faster, approximate)."
    )
    compile: bool = Field(False, description="torch.compile the image tower (slow first batch, faster after).")
    gpu_decode: bool = Field(
        True, description="CUDA only: decode JPEGs on the GPU when torchvision is importable."
    )


class PolicySettings(SettingsGroup):
    path: Path = Field(Path("policies/default.yaml"), description="The default policy file.")
    sources: dict[str, Path] = Field(
        default_factory=dict,
        examples=[{"kids-app": "policies/kids.yaml"}],
        description='Per event source (tenant), a policy file instead of the default, as JSON: {"kids-app": "p.yaml"}.',
    )
    shadow: list[Path] = Field(
        default_factory=list,
        examples=[["policies/candidate.yaml"]],
        description="Candidate policy files evaluated on every event and recorded, never acted on (JSON list).",
    )
    reload_interval_s: float = Field(
        5.0, ge=0, description="How often a running worker checks its policy files for edits; 0 disables reloads."
    )


class EmbeddingSettings(SettingsGroup):
    store: bool = Field(True, description="Store each scored image's embedding (float16) for backtests and reuse.")
    reuse: bool = Field(True, description="Reuse the stored embedding of an image already scored by the same model.")
    retention_days: float = Field(
        30.0, ge=0, description="`moderation embeddings prune` deletes embeddings older than this; 0 keeps them."
    )
    cache_size: int = Field(10_000, ge=0, description="Recent embeddings kept in memory for reuse, per worker.")


class MediaSettings(SettingsGroup):
    enabled: bool = Field(
        True, description="Keep a downscaled, metadata-free JPEG of every item sent to review, for the console."
    )
    directory: Path | None = Field(
        None, description="Where the reviewer copies are kept; default: media/ in the data directory."
    )
    max_side: int = Field(
        512, ge=64, le=4096, description="Longest side of a reviewer copy, in pixels (never enlarged)."
    )
    quality: int = Field(80, ge=30, le=95, description="JPEG quality of the reviewer copies.")
    retention_days: float = Field(
        30.0, ge=0,
        description="`moderation media prune` deletes the copies of decided items older than this; 0 keeps them.",
    )


class ImageSettings(SettingsGroup):
    # Pillow refuses outright any image over twice its own limit (89,478,485 pixels by default), in every
    # thread of the process; under this ceiling `max_pixels` alone decides and Pillow's limit stays as is.
    MAX_PIXELS_CEILING: ClassVar[int] = 2 * 89_478_485

    max_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest encoded image accepted.")
    max_pixels: int = Field(
        64_000_000, ge=1, le=MAX_PIXELS_CEILING, description="Largest decoded image (width x height)."
    )
    allowed_formats: tuple[str, ...] = Field(
        ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"),
        min_length=1,
        description="Image formats decoded, by Pillow name (JSON list); others are refused from the header.",
    )
    decode_timeout_s: float = Field(
        5.0, gt=0, description="Time budget for decoding and preprocessing one image; over it, an error verdict."
    )
    fetch_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Total time to fetch one image: for http(s) connections, redirects, headers and body; "
        "for file:// the whole read.",
    )
    pdq: bool = Field(
        True, description="Compute each picture's PDQ perceptual hash and quality, stored with its verdict."
    )
    allow_http: bool = Field(True, description="Accept http(s):// image URLs.")
    allowed_url_hosts: tuple[str, ...] = Field(
        (),
        description='Hosts http(s) images may come from (JSON list, "*.example.com" for subdomains); empty: any.',
    )
    allow_private_networks: bool = Field(
        False, description="Let http(s) images come from loopback, private and link-local addresses."
    )
    max_redirects: int = Field(5, ge=0, le=20, description="Redirects followed per http(s) image, each checked anew.")
    allow_file: bool = Field(
        True, description="Accept file:// image URLs under file_root; false refuses them even with a root set."
    )
    file_root: Path | None = Field(
        None,
        description="The directory file:// images must lie under; unset (the default), every file:// URL is refused.",
    )

    @field_validator("allowed_formats")
    @classmethod
    def _known_formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from PIL import Image  # only here: reading settings needs no imaging library otherwise

        Image.init()
        formats = tuple(dict.fromkeys(name.strip().upper() for name in value))
        unknown = [name for name in formats if name not in Image.OPEN]
        if unknown:
            raise ValueError(f"unknown to Pillow: {', '.join(unknown)}")
        return formats

    @field_validator("allowed_url_hosts")
    @classmethod
    def _host_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        hosts = []
        for raw in value:
            host = raw.strip().rstrip(".").lower()
            wildcard, name = ("*.", host[2:]) if host.startswith("*.") else ("", host)
            try:
                name = name if name.isascii() else name.encode("idna").decode("ascii")  # as URLs are matched
            except UnicodeError as exc:
                raise ValueError(f"{raw!r}: {exc}") from exc
            if not name or (any(c in name for c in "*/:@?#[] ") and not cls._is_ipv6(name)):
                raise ValueError(f"{raw!r} is not a host name, an IP address or '*.' and a domain")
            hosts.append(wildcard + name)
        return tuple(hosts)

    @staticmethod
    def _is_ipv6(text: str) -> bool:
        from ipaddress import ip_address

        try:
            return ip_address(text).version == 6
        except ValueError:
            return False


def mask_url(url: str) -> str:
    """Hide the password in a URL such as ``postgresql://user:secret@host/db`` (also ``?password=``)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        # Rebuilt from the raw netloc, not from .hostname, so an IPv6 host keeps its brackets.
        netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostport}"
    query = "&".join(
        f"{key}={MASK}" if key.lower() in _SECRET_QUERY_KEYS else pair
        for pair in parts.query.split("&")
        if pair
        for key in [pair.split("=", 1)[0]]
    )
    # Replace in place rather than urlunsplit(), which would turn "sqlite:///x.db" into "sqlite:/x.db".
    masked = url.replace(parts.netloc, netloc, 1) if netloc != parts.netloc else url
    return masked.replace(f"?{parts.query}", f"?{query}", 1) if query != parts.query else masked


