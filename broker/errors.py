"""The one exception hierarchy of the broker tools, converted to messages at the CLI."""


class BrokerToolError(Exception):
    """Base of every error the broker tools raise on purpose."""


class AccountError(BrokerToolError):
    """An account operation was refused (bad id, unknown or duplicate account)."""


class PkiError(BrokerToolError):
    """The PKI could not be created or read."""


class ProvisionError(BrokerToolError):
    """A device cannot be provisioned as asked (host, Wi-Fi, a revoked id)."""
