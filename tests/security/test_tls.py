"""TLS (issue 15, item 3): a whole stack whose four gRPC servers listen with TLS, mutual between
services, with a CA and certificates made here. A request routes end to end over it; plaintext,
an untrusted server and a client without a certificate (or with one from another CA) are refused;
inconsistent settings stop start-up naming the variable."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import pathlib

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from security.conftest import ARC
from xrouter.api.common.v1 import common_pb2
from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.common import settings
from xrouter.common.tls import TlsFiles, channel_credentials
from xrouter.local_stack import InProcessStack, sqlite_url
from xrouter.router.auth import bearer_metadata
from xrouter.router.settings import RouterSettings

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclasses.dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return Authority(key, cert)


def issue(ca: Authority, common_name: str, folder: pathlib.Path) -> TlsFiles:
    """A certificate for 127.0.0.1 and localhost, usable as server and client certificate (as one
    per service is, in a mesh), written as PEM files beside the CA's."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca.key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{common_name}.{name}" for name in ("crt", "key", "ca")}
    paths["crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    paths["ca"].write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    return TlsFiles(str(paths["crt"]), str(paths["key"]), str(paths["ca"]))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, TlsFiles]:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("pki")
    ca, stranger = make_ca("xrouter test CA"), make_ca("someone else's CA")
    return {"service": issue(ca, "xrouter-service", folder), "client": issue(ca, "client", folder),
            "stranger": issue(stranger, "stranger", folder)}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tls_stack(tmp_path_factory, pki):  # type: ignore[no-untyped-def]
    running = await InProcessStack(sqlite_url(tmp_path_factory.mktemp("tls")), tls=pki["service"]).start()
    yield running
    await running.stop()


def route_request(prompt: str) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(messages=[common_pb2.ChatMessage(role="user", content=prompt)], policy="cheapest")


async def test_a_request_routes_end_to_end_over_tls_with_mutual_tls_between_services(  # type: ignore[no-untyped-def]
        tls_stack, pki, recorded) -> None:
    # A public client trusts the CA and presents no certificate: the router's port authenticates by key.
    credentials = channel_credentials(TlsFiles(ca_file=pki["client"].ca_file))
    async with grpc.aio.secure_channel(tls_stack.router_target, credentials) as channel:
        reply = await router_pb2_grpc.RouterServiceStub(channel).Route(
            route_request(recorded[ARC][""]), timeout=30, metadata=bearer_metadata(tls_stack.tenant_key("tls")))
    # The router reached adapters and metering (both requiring client certificates) over mTLS.
    assert reply.answer and reply.calls[0].status == common_pb2.CALL_STATUS_OK
    assert tls_stack.ledger.usage("tls").requests == 1


async def test_plaintext_is_refused_on_every_tls_port(tls_stack, recorded) -> None:  # type: ignore[no-untyped-def]
    for name, server in tls_stack.servers.items():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await router_pb2_grpc.RouterServiceStub(channel).GetPolicy(router_pb2.GetPolicyRequest(), timeout=5)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE, name


@pytest.mark.parametrize("client", ["none", "stranger"])
async def test_an_internal_service_refuses_a_client_without_a_certificate_of_its_ca(  # type: ignore[no-untyped-def]
        tls_stack, pki, client: str) -> None:
    files = TlsFiles(ca_file=pki["service"].ca_file) if client == "none" else dataclasses.replace(
        pki["stranger"], ca_file=pki["service"].ca_file)  # trusts the server, but its own cert is a stranger's
    async with grpc.aio.secure_channel(f"127.0.0.1:{tls_stack.servers['metering'].port}",
                                       channel_credentials(files)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await metering_pb2_grpc.MeteringServiceStub(channel).CreateApiKey(
                metering_pb2.CreateApiKeyRequest(tenant="intruder"), timeout=5)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert tls_stack.ledger.list_api_keys("intruder") == []


async def test_a_client_that_does_not_trust_the_servers_ca_refuses_it(tls_stack, pki) -> None:  # type: ignore[no-untyped-def]
    credentials = channel_credentials(TlsFiles(ca_file=pki["stranger"].ca_file))
    async with grpc.aio.secure_channel(tls_stack.router_target, credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await router_pb2_grpc.RouterServiceStub(channel).GetPolicy(
                router_pb2.GetPolicyRequest(), timeout=5, metadata=bearer_metadata(tls_stack.admin_key))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_inconsistent_tls_settings_stop_start_up_naming_the_variable(pki, tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = {"XROUTER_ROUTER_ADAPTERS_TARGET": "a:1", "XROUTER_ROUTER_METERING_TARGET": "m:1"}
    with pytest.raises(settings.SettingsError, match="XROUTER_ROUTER_TLS_CERT_FILE and XROUTER_ROUTER_TLS_KEY_FILE"):
        settings.load(RouterSettings, {**base, "XROUTER_ROUTER_TLS_CERT_FILE": pki["service"].cert_file})
    with pytest.raises(settings.SettingsError, match="XROUTER_ROUTER_TLS_CA_FILE: no readable file"):
        settings.load(RouterSettings, {**base, "XROUTER_ROUTER_TLS_CA_FILE": str(tmp_path / "missing.pem")})
    loaded = settings.load(RouterSettings, {**base, "XROUTER_ROUTER_TLS_CA_FILE": pki["service"].ca_file})
    assert loaded.tls().enabled and not loaded.tls().cert_file


async def test_the_health_port_answers_probes_in_plaintext_beside_a_tls_service(pki) -> None:  # type: ignore[no-untyped-def]
    """Kubelet gRPC probes cannot speak TLS: the health-only port answers them; it serves nothing else."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from opentelemetry.sdk.trace import TracerProvider

    from xrouter.common.grpc_server import GrpcServer
    from xrouter.supervisor import free_port

    health_port = free_port()
    server = GrpcServer("adapters", lambda _: [], TracerProvider(), tls=pki["service"], health_port=health_port)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await metering_pb2_grpc.MeteringServiceStub(channel).CreateApiKey(
                    metering_pb2.CreateApiKeyRequest(tenant="x"), timeout=5)
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
            await server.set_serving(False)
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await server.stop(0)
