"""Exceptions shared by novarpc's typed-service interop tests and their
Python peers, as nova.exception's are: a message and keyword arguments."""


class InteropException(Exception):
    def __init__(self, message=None, **kwargs):
        self.kwargs = kwargs
        super().__init__(message or self.__class__.__name__)


class InstanceNotFound(InteropException):
    pass
