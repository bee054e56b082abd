"""Shared fixtures: real databases, the real embedded broker, the offline test model."""

from tests.fixtures_db import *  # noqa: F403
from tests.fixtures_kafka import *  # noqa: F403
from tests.fixtures_model import *  # noqa: F403
