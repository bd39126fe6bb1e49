//! TCP links: the baseline. The Noise handshake of `relay-link`, then
//! frames of `u16 length || AES-256-GCM(type || payload)` with the frame
//! counter as nonce (TCP keeps order). A frame carries up to 64 cells, a
//! keepalive, or a graceful close.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use relay_kernel::{Cell, NodeId};
use relay_link::link::CloseCell;
use relay_link::transport::{OpenKey, SealKey};
use relay_link::{
    link_pair, BoxFut, CellRx, CellTx, CloseReason, Identity, Initiator, Link, LinkConfig,
    LinkError, LinkIo, Responder, Scheme, Session, StaticKey, Transport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::timeout;

pub mod frame;

use frame::{Next, Received, FRAME_CELLS, FRAME_CLOSE, FRAME_KEEPALIVE, MAX_BATCH, MAX_FRAME};

/// A TCP listener plus the means to dial.
pub struct TcpTransport {
    local: SocketAddr,
    key: Arc<StaticKey>,
    config: LinkConfig,
    accepted: tokio::sync::Mutex<mpsc::Receiver<Result<Link, LinkError>>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl TcpTransport {
    /// Listens on `addr` (port 0 picks one).
    pub async fn bind(
        addr: SocketAddr,
        identity: &Identity,
        config: LinkConfig,
    ) -> Result<TcpTransport, LinkError> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let key = Arc::new(StaticKey::new(identity)?);
        let (tx, rx) = mpsc::channel(64);
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = tokio::spawn(accept_loop(
            listener,
            key.clone(),
            config,
            tx,
            tasks.clone(),
        ));
        track(&tasks, accept.abort_handle());
        Ok(TcpTransport {
            local,
            key,
            config,
            accepted: tokio::sync::Mutex::new(rx),
            tasks,
        })
    }
}

fn track(tasks: &Arc<Mutex<Vec<AbortHandle>>>, h: AbortHandle) {
    if let Ok(mut t) = tasks.lock() {
        t.retain(|h| !h.is_finished());
        t.push(h);
    }
}

async fn accept_loop(
    listener: TcpListener,
    key: Arc<StaticKey>,
    config: LinkConfig,
    out: mpsc::Sender<Result<Link, LinkError>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
) {
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            continue;
        };
        let (key, out, tasks2) = (key.clone(), out.clone(), tasks.clone());
        let h = tokio::spawn(async move {
            let shaken = timeout(config.handshake_timeout, respond(stream, &key)).await;
            // Failed or slow handshakes (garbage, scanners) are dropped
            // silently: the listener goes on.
            if let Ok(Ok((stream, session))) = shaken {
                let link = start_link(stream, session, remote, false, config, &tasks2);
                let _ = out.send(Ok(link)).await;
            }
        });
        track(&tasks, h.abort_handle());
    }
}

async fn read_msg(stream: &mut TcpStream) -> Result<Vec<u8>, LinkError> {
    let len = usize::from(stream.read_u16().await?);
    if len > relay_link::handshake::MAX_MSG {
        return Err(LinkError::Handshake("oversized handshake message"));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_msg(stream: &mut TcpStream, msg: &[u8]) -> Result<(), LinkError> {
    stream.write_u16(msg.len() as u16).await?;
    stream.write_all(msg).await?;
    Ok(())
}

async fn respond(
    mut stream: TcpStream,
    key: &StaticKey,
) -> Result<(TcpStream, Session), LinkError> {
    let m1 = read_msg(&mut stream).await?;
    let (r, m2) = Responder::respond(key, &m1)?;
    write_msg(&mut stream, &m2).await?;
    let m3 = read_msg(&mut stream).await?;
    Ok((stream, r.finish(&m3)?))
}

async fn initiate(
    mut stream: TcpStream,
    key: &StaticKey,
    expected: NodeId,
) -> Result<(TcpStream, Session), LinkError> {
    let (i, m1) = Initiator::start(key, expected)?;
    write_msg(&mut stream, &m1).await?;
    let m2 = read_msg(&mut stream).await?;
    let (m3, session) = i.finish(&m2)?;
    write_msg(&mut stream, &m3).await?;
    Ok((stream, session))
}

fn start_link(
    stream: TcpStream,
    session: Session,
    remote: SocketAddr,
    initiator: bool,
    config: LinkConfig,
    tasks: &Arc<Mutex<Vec<AbortHandle>>>,
) -> Link {
    let _ = stream.set_nodelay(true);
    let (link, io) = link_pair(&config, session.peer, remote, initiator);
    let (rd, wr) = stream.into_split();
    let LinkIo {
        outgoing,
        incoming,
        closed,
    } = io;
    let r = tokio::spawn(reader(rd, session.open, incoming, closed.clone(), config));
    let w = tokio::spawn(writer(wr, session.seal, outgoing, closed, config));
    track(tasks, r.abort_handle());
    track(tasks, w.abort_handle());
    link
}

/// Bytes of one receive block: four whole frames of 64 cells. The reader
/// reads the socket straight into a block (no `BufReader` copy, no zeroing)
/// and splits frames off it, so the cells of a frame share the block's
/// allocation, which is freed when the last of them is dropped. Four frames
/// keep a read syscall per few frames on a bulk transfer; a block exactly
/// that size ends on a frame boundary when the frames are full, so moving
/// to the next block copies nothing then.
const READ_BLOCK: usize = 4 * (2 + MAX_FRAME);
/// A new block is started rather than reading fewer bytes than this.
const MIN_READ: usize = 2048;

/// Makes room in `buf` for at least `needed` more bytes (and a read of at
/// least [`MIN_READ`]): when the block is used up, the unfinished frame in
/// it moves to a new block (the old one lives on while its cells do).
fn make_room(buf: &mut BytesMut, needed: usize) {
    let spare = buf.capacity() - buf.len();
    if spare >= needed.max(MIN_READ) {
        return;
    }
    let mut fresh = BytesMut::with_capacity(READ_BLOCK.max(buf.len() + needed));
    fresh.extend_from_slice(buf);
    *buf = fresh;
}

async fn reader(
    mut rd: OwnedReadHalf,
    key: OpenKey,
    incoming: CellTx,
    closed: CloseCell,
    config: LinkConfig,
) {
    let mut buf = BytesMut::with_capacity(READ_BLOCK);
    let mut counter = 0u64;
    let mut cells = VecDeque::with_capacity(4 * MAX_BATCH);
    let reason = loop {
        // Every whole frame in the buffer; their cells go to the node in one
        // batch (one queue lock and one wake-up of the driver per read, not
        // per frame). A frame that ends the link ends it after the cells
        // of the frames before it.
        let (needed, end) = loop {
            let sealed = match frame::next_frame(&mut buf) {
                Ok(Next::Frame(f)) => f,
                Ok(Next::Need(n)) => break (n, None),
                Err(e) => break (0, Some(CloseReason::Error(e.to_string()))),
            };
            let got = frame::open(&key, counter, sealed, &mut cells);
            counter += 1;
            match got {
                Ok(Received::Cells | Received::Keepalive) => {}
                Ok(Received::Close) => break (0, Some(CloseReason::Peer)),
                Err(e) => break (0, Some(CloseReason::Error(e.to_string()))),
            }
        };
        if !cells.is_empty() && incoming.send_all(&mut cells).await.is_err() {
            break CloseReason::Local;
        }
        if let Some(reason) = end {
            break reason;
        }
        make_room(&mut buf, needed);
        match timeout(config.idle_timeout, rd.read_buf(&mut buf)).await {
            Err(_) => break CloseReason::IdleTimeout,
            Ok(Err(e)) => break CloseReason::Error(e.to_string()),
            // The peer closed without a close frame: the texts of the
            // reads this replaced (`read_u16`, `read_exact`).
            Ok(Ok(0)) if buf.is_empty() => {
                break CloseReason::Error(io::Error::from(io::ErrorKind::UnexpectedEof).to_string())
            }
            Ok(Ok(0)) => {
                break CloseReason::Error(
                    io::Error::new(io::ErrorKind::UnexpectedEof, "early eof").to_string(),
                )
            }
            Ok(Ok(_)) => {}
        }
    };
    closed.set(reason);
}

/// Seals the frame in `buf` (see [`frame::seal`]) and writes it with one
/// call.
async fn write_frame(
    wr: &mut OwnedWriteHalf,
    key: &SealKey,
    counter: &mut u64,
    buf: &mut Vec<u8>,
) -> Result<(), LinkError> {
    frame::seal(key, *counter, buf)?;
    *counter += 1;
    wr.write_all(buf).await?;
    Ok(())
}

/// Bytes of frames the writer gathers into one write: as many whole frames
/// as the reader's block holds, so cells queued together cost one send
/// (and one wake-up of the peer's reader), not one per 64 cells.
const WRITE_FRAMES: usize = READ_BLOCK;

/// Seals the cells in `cells` and any more queued now into frames in `buf`
/// (up to [`WRITE_FRAMES`] bytes), for one write.
fn gather_frames(
    key: &SealKey,
    counter: &mut u64,
    outgoing: &mut CellRx,
    cells: &mut Vec<Cell>,
    buf: &mut Vec<u8>,
) -> Result<(), LinkError> {
    buf.clear();
    loop {
        let at = frame::append_frame(buf, FRAME_CELLS);
        for c in cells.drain(..) {
            buf.extend_from_slice(c.as_bytes());
        }
        frame::seal_at(key, *counter, buf, at)?;
        *counter += 1;
        if buf.len() + 2 + MAX_FRAME > WRITE_FRAMES || outgoing.try_recv_many(cells, MAX_BATCH) == 0
        {
            return Ok(());
        }
    }
}

use frame::start_frame;

async fn writer(
    mut wr: OwnedWriteHalf,
    key: SealKey,
    mut outgoing: CellRx,
    closed: CloseCell,
    config: LinkConfig,
) {
    let mut counter = 0u64;
    let mut buf = Vec::with_capacity(WRITE_FRAMES);
    let mut cells = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = match timeout(config.keepalive, outgoing.recv_many(&mut cells, MAX_BATCH)).await {
            Err(_) => {
                start_frame(&mut buf, FRAME_KEEPALIVE);
                if write_frame(&mut wr, &key, &mut counter, &mut buf)
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            Ok(n) => n,
        };
        if n > 0 {
            if gather_frames(&key, &mut counter, &mut outgoing, &mut cells, &mut buf).is_err() {
                break;
            }
            if wr.write_all(&buf).await.is_err() {
                break;
            }
            continue;
        }
        // The node closed or dropped the link: close gracefully.
        start_frame(&mut buf, FRAME_CLOSE);
        let _ = write_frame(&mut wr, &key, &mut counter, &mut buf).await;
        let _ = wr.shutdown().await;
        closed.set(CloseReason::Local);
        return;
    }
    closed.set(CloseReason::Error("write failed".into()));
}

impl Transport for TcpTransport {
    fn scheme(&self) -> Scheme {
        Scheme::Tcp
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn connect(&self, addr: SocketAddr, expected: NodeId) -> BoxFut<'_, Result<Link, LinkError>> {
        Box::pin(async move {
            let stream = timeout(self.config.handshake_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| LinkError::HandshakeTimeout)??;
            let (stream, session) = timeout(
                self.config.handshake_timeout,
                initiate(stream, &self.key, expected),
            )
            .await
            .map_err(|_| LinkError::HandshakeTimeout)??;
            Ok(start_link(
                stream,
                session,
                addr,
                true,
                self.config,
                &self.tasks,
            ))
        })
    }

    fn accept(&self) -> BoxFut<'_, Result<Link, LinkError>> {
        Box::pin(async move {
            let mut rx = self.accepted.lock().await;
            rx.recv().await.unwrap_or(Err(LinkError::Closed))
        })
    }

    fn crash(&self) {
        if let Ok(t) = self.tasks.lock() {
            for h in t.iter() {
                h.abort();
            }
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.crash();
    }
}
