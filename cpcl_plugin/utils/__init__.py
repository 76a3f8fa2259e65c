"""Small helpers shared by the library, the tools and the trainer."""
from .progress import Progress, console_logging, quiet_logger, track

__all__ = ["Progress", "track", "console_logging", "quiet_logger"]
