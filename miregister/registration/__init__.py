"""Registration: ``register(fixed, moving)``, its options and its result."""
from ..errors import RegistrationError
from .options import RegistrationOptions, StageOptions
from .register import register
from .result import RegistrationResult

__all__ = ["register", "RegistrationResult", "RegistrationOptions", "StageOptions", "RegistrationError"]
