"""Registration: ``register(fixed, moving)``, its options and its result."""
from ..errors import RegistrationError
from .options import RegistrationOptions, StageOptions
from .register import IterationInfo, register
from .result import RegistrationResult

__all__ = ["register", "IterationInfo", "RegistrationResult", "RegistrationOptions", "StageOptions", "RegistrationError"]
