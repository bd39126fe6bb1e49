//! Raw QUIC baselines for linkbench: the QUIC libraries our quic and s2n
//! links are built on, used the way their own perf tools use them, so that
//! each link is judged against its library in the same run rather than
//! against a remembered figure.
//!
//! Each baseline is one connection on 127.0.0.1 carrying one stream of
//! large writes (1 MiB `Bytes` chunks, nothing copied by the writer) and a
//! reader that takes whole chunks, with the library's default transport
//! settings; and the same with as many streams as linkbench has circuits
//! (at most 100, the libraries' default stream limit; one writer taking the
//! streams in turn with 1 MiB / streams per write, a reader task per
//! stream: plain use of the library), which shows what one stream per
//! circuit costs the library itself. All use TLS 1.3 with rustls' ring
//! provider (what our links use) and a self-signed certificate that the
//! client does not check (the handshake is not timed). Gbit/s counts
//! stream bytes. Included by linkbench with
//! `#[path]` (a file under `src/bin/` would be a binary of its own).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use relay_link::tls::NodeCert;
use relay_link::Identity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{cpu_seconds, Row};

/// Size of each write.
const CHUNK: usize = 1 << 20;
/// Kernel socket buffers, as our links ask for.
const SOCKET_BUFFER: usize = 4 << 20;
const ALPN: &[u8] = b"linkbench";
/// Both libraries let a peer open 100 streams by default.
const MAX_STREAMS: usize = 100;

/// A client-side verifier that accepts any certificate but still checks
/// the handshake signature (as quinn's perf client does).
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// rustls configs for a server with a self-signed certificate and a client
/// that trusts anything.
fn tls_configs() -> (rustls::ServerConfig, rustls::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = NodeCert::new(&Identity::from_secret([9; 32])).unwrap();
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.clone()], cert.key())
        .unwrap();
    server.alpn_protocols = vec![ALPN.to_vec()];
    server.max_early_data_size = 0;
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    (server, client)
}

fn udp_socket() -> std::net::UdpSocket {
    relay_link::udp::bind_udp("127.0.0.1:0".parse().unwrap(), SOCKET_BUFFER).unwrap()
}

/// `total` bytes as chunks of `size` sharing one buffer.
fn chunks(total: u64, size: usize) -> impl Iterator<Item = Bytes> {
    let data = Bytes::from(vec![0x5au8; size]);
    let mut left = total;
    std::iter::from_fn(move || {
        let n = left.min(size as u64) as usize;
        left -= n as u64;
        (n > 0).then(|| data.slice(..n))
    })
}

/// The row's name.
fn name(lib: &str, streams: usize) -> String {
    match streams {
        1 => format!("raw {lib}, 1 stream, TLS"),
        n => format!("raw {lib}, {n} streams, TLS"),
    }
}

/// Writes `total` bytes over `streams` new streams, round robin, and waits
/// until the peer has them all.
async fn quinn_write(conn: &quinn::Connection, total: u64, streams: usize) {
    let mut out = Vec::new();
    for _ in 0..streams {
        out.push(conn.open_uni().await.unwrap());
    }
    for (i, c) in chunks(total, CHUNK / streams).enumerate() {
        out[i % streams].write_chunk(c).await.unwrap();
    }
    for s in &mut out {
        s.finish().unwrap();
    }
    for s in &mut out {
        let _ = s.stopped().await;
    }
}

/// Reads `streams` streams the peer opens to their ends; the bytes read.
async fn quinn_read(conn: &quinn::Connection, streams: usize) -> u64 {
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let mut r = conn.accept_uni().await.unwrap();
        readers.spawn(async move {
            let mut bufs = vec![Bytes::new(); 32];
            let mut got = 0u64;
            while let Some(n) = r.read_chunks(&mut bufs).await.unwrap() {
                got += bufs[..n].iter().map(|b| b.len() as u64).sum::<u64>();
            }
            got
        });
    }
    readers.join_all().await.iter().sum()
}

/// A quinn server endpoint on a fresh loopback socket (must be called
/// inside the runtime that will drive it).
fn quinn_server(tls: rustls::ServerConfig, mtu_ceiling: Option<u16>) -> quinn::Endpoint {
    use quinn::crypto::rustls::QuicServerConfig;
    let mut cfg =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
    if let Some(t) = transport(mtu_ceiling) {
        cfg.transport_config(t);
    }
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(cfg),
        udp_socket(),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap()
}

/// quinn's transport config with MTU discovery searching up to
/// `mtu_ceiling` bytes of UDP payload (None: quinn's defaults, whose
/// search stops at 1,452).
fn transport(mtu_ceiling: Option<u16>) -> Option<Arc<quinn::TransportConfig>> {
    let ceiling = mtu_ceiling?;
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(ceiling);
    let mut t = quinn::TransportConfig::default();
    t.mtu_discovery_config(Some(mtud));
    Some(Arc::new(t))
}

/// A quinn client endpoint on a fresh loopback socket.
fn quinn_client(tls: rustls::ClientConfig, mtu_ceiling: Option<u16>) -> quinn::Endpoint {
    use quinn::crypto::rustls::QuicClientConfig;
    let mut client = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        udp_socket(),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    let mut cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    if let Some(t) = transport(mtu_ceiling) {
        cfg.transport_config(t);
    }
    client.set_default_client_config(cfg);
    client
}

/// quinn with its default transport config (GSO/GRO and MTU discovery on).
pub async fn raw_quinn(mb: u64, streams: usize) -> Row {
    let streams = streams.clamp(1, MAX_STREAMS);
    let (server_tls, client_tls) = tls_configs();
    let (server, client) = (
        quinn_server(server_tls, None),
        quinn_client(client_tls, None),
    );
    let server_addr: SocketAddr = server.local_addr().unwrap();
    let (dialled, accepted) = tokio::join!(
        async { client.connect(server_addr, "bench").unwrap().await.unwrap() },
        async { server.accept().await.unwrap().await.unwrap() }
    );
    let total = mb * 1_000_000;
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        quinn_write(&dialled, total, streams).await;
        dialled
    });
    let got = quinn_read(&accepted, streams).await;
    let wall = start.elapsed();
    let cpu = cpu_seconds() - cpu0;
    assert_eq!(got, total, "raw quinn lost bytes");
    let dialled = writer.await.unwrap();
    dialled.close(0u32.into(), b"done");
    accepted.close(0u32.into(), b"done");
    Row {
        name: name("quinn", streams),
        payload_bytes: got,
        wall,
        cpu,
    }
}

/// [`raw_quinn`] with each endpoint on its own thread and current-thread
/// runtime (the client writing, the server reading), as linkbench runs its
/// link rows by default; `mtu_ceiling` lets quinn's MTU discovery search
/// up to that many bytes (as far as udt's), None keeps quinn's 1,452.
pub fn raw_quinn_split(mb: u64, streams: usize, mtu_ceiling: Option<u16>) -> Row {
    let streams = streams.clamp(1, MAX_STREAMS);
    let total = mb * 1_000_000;
    let (server_tls, client_tls) = tls_configs();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let reader = std::thread::spawn(move || {
        runtime().block_on(async move {
            let server = quinn_server(server_tls, mtu_ceiling);
            addr_tx.send(server.local_addr().unwrap()).unwrap();
            let conn = server.accept().await.unwrap().await.unwrap();
            let got = quinn_read(&conn, streams).await;
            let end = (Instant::now(), cpu_seconds());
            // The client closes once its streams are acknowledged.
            let _ = conn.closed().await;
            (got, end)
        })
    });
    let writer = std::thread::spawn(move || {
        runtime().block_on(async move {
            let client = quinn_client(client_tls, mtu_ceiling);
            let addr = addr_rx.await.unwrap();
            let conn = client.connect(addr, "bench").unwrap().await.unwrap();
            let start = (Instant::now(), cpu_seconds());
            quinn_write(&conn, total, streams).await;
            conn.close(0u32.into(), b"done");
            client.wait_idle().await;
            start
        })
    });
    let (start, cpu0) = writer.join().unwrap();
    let (got, (end, cpu1)) = reader.join().unwrap();
    assert_eq!(got, total, "raw quinn lost bytes");
    let mtu = mtu_ceiling.map_or(String::new(), |c| format!(", MTU search to {c}"));
    Row {
        name: format!("{}, one thread per end{mtu}", name("quinn", streams)),
        payload_bytes: got,
        wall: end - start,
        cpu: cpu1 - cpu0,
    }
}

/// s2n-quic with its rustls provider and default limits (GSO on).
pub async fn raw_s2n(mb: u64, streams: usize) -> Row {
    let streams = streams.clamp(1, MAX_STREAMS);
    use s2n_quic::client::Connect;
    use s2n_quic::provider::tls::rustls as s2n_rustls;
    let (server_tls, client_tls) = tls_configs();
    let server_io = s2n_quic::provider::io::tokio::Provider::builder()
        .with_rx_socket(udp_socket())
        .unwrap()
        .build()
        .unwrap();
    let client_io = s2n_quic::provider::io::tokio::Provider::builder()
        .with_rx_socket(udp_socket())
        .unwrap()
        .build()
        .unwrap();
    let mut server = s2n_quic::Server::builder()
        .with_tls(s2n_rustls::Server::from(server_tls))
        .unwrap()
        .with_io(server_io)
        .unwrap()
        .start()
        .unwrap();
    let client = s2n_quic::Client::builder()
        .with_tls(s2n_rustls::Client::from(client_tls))
        .unwrap()
        .with_io(client_io)
        .unwrap()
        .start()
        .unwrap();
    let server_addr = server.local_addr().unwrap();
    let (dialled, accepted) = tokio::join!(
        async {
            client
                .connect(Connect::new(server_addr).with_server_name("bench"))
                .await
                .unwrap()
        },
        async { server.accept().await.unwrap() }
    );
    let (mut dialled, mut accepted) = (dialled, accepted);
    let total = mb * 1_000_000;
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let mut out = Vec::new();
        for _ in 0..streams {
            out.push(dialled.open_send_stream().await.unwrap());
        }
        for (i, c) in chunks(total, CHUNK / streams).enumerate() {
            out[i % streams].send(c).await.unwrap();
        }
        for s in &mut out {
            s.close().await.unwrap();
        }
        dialled
    });
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let mut r = accepted.accept_receive_stream().await.unwrap().unwrap();
        readers.spawn(async move {
            let mut bufs = vec![Bytes::new(); 32];
            let mut got = 0u64;
            loop {
                let (n, open) = r.receive_vectored(&mut bufs).await.unwrap();
                // s2n-quic fills only empty slots: take the chunks out.
                got += bufs[..n]
                    .iter_mut()
                    .map(|b| std::mem::take(b).len() as u64)
                    .sum::<u64>();
                if !open {
                    break got;
                }
            }
        });
    }
    let got: u64 = readers.join_all().await.iter().sum();
    let wall = start.elapsed();
    let cpu = cpu_seconds() - cpu0;
    assert_eq!(got, total, "raw s2n-quic lost bytes");
    let _dialled = writer.await.unwrap();
    drop(accepted);
    Row {
        name: name("s2n-quic", streams),
        payload_bytes: got,
        wall,
        cpu,
    }
}
