# The answer's process: runs the answer's code, then answers the tests' requests on the channel.
#
# Not a module: boot.py runs this text (after wire.py's) as `python -I -S -u -c`, a fresh
# interpreter, so that this process holds no copy of the harness's memory (the tests and their
# expected values live only in the tests' process). Everything here is untrusted from the moment
# the answer runs: whatever it sends back is decoded by the tests' side as plain data, and a pass
# is decided there, so tampering with this file's functions can only make the answer fail.
# Requests arrive on fd 3, replies leave on fd 4.

import builtins
import os
import sys
import traceback

_REQUESTS, _REPLIES = 3, 4
_ANSWER = "/tmp/main.py"
_objects = {}  # handle number -> object kept here for the tests' side
_numbers = {}  # id(object) -> its handle number: one object, one handle (`is` holds over there)


def _handle(value):
    number = _numbers.get(id(value))  # ids stay unique: _objects keeps every object alive
    if number is None:
        number = _numbers[id(value)] = len(_objects) + 1
        _objects[number] = value
    return number


def _lookup(number):
    if number not in _objects:
        raise WireError(f"no object #{number}")
    return _objects[number]


def _summary(error):
    """The exception and the answer's line it came from."""
    line = None
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.filename == _ANSWER:
            line = {"number": frame.lineno, "source": (frame.line or "")[:300]}
            break
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return {"error": text[:1000], "line": line}


def _serve(namespace):
    while True:
        try:
            request = receive(_REQUESTS)
        except EOFError:
            os._exit(0)
        op, args = request[0], request[1:]
        try:
            if op == "global":
                if args[0] in namespace:
                    value = namespace[args[0]]
                elif hasattr(builtins, args[0]):
                    value = getattr(builtins, args[0])
                else:
                    raise NameError(f"name {args[0]!r} is not defined")
            else:
                target = _lookup(args[0])
                if op == "call":
                    values = decode(args[1], _lookup)
                    value = target(*values[0], **values[1])
                elif op == "getattr":
                    value = getattr(target, args[1])
                elif op == "setattr":
                    value = setattr(target, args[1], decode(args[2], _lookup))
                elif op == "getitem":
                    value = target[decode(args[1], _lookup)]
                elif op == "len":
                    value = len(target)
                elif op == "iter":
                    value = iter(target)
                elif op == "next":
                    value = next(target)
                else:
                    raise WireError(f"unknown request {op!r}")
            reply = {"ok": encode(value, _handle)}
        except BaseException as error:  # the tests' side decides what an exception means
            reply = {"raised": [type(error).__name__, str(error)[:1000]]}
        try:
            send(_REPLIES, reply)
        except WireError as error:  # a value too big to send: say so instead
            send(_REPLIES, {"raised": ["WireError", str(error)]})


def _main():
    with open(_ANSWER, encoding="utf-8") as file:
        source = file.read()
    sys.argv = [_ANSWER]
    sys.path.insert(0, "/tmp")
    namespace = {"__name__": "__main__", "__file__": _ANSWER, "__builtins__": builtins}
    me = os.getpid()
    try:
        exec(compile(source, _ANSWER, "exec"), namespace)
    except BaseException as error:  # SystemExit too: leaving while loading is failing
        if os.getpid() == me:  # processes the answer forked just end
            send(_REPLIES, {"load_error": _summary(error)})
        os._exit(1)
    if os.getpid() != me:
        os._exit(0)
    send(_REPLIES, {"ready": True})
    _serve(namespace)


_main()
