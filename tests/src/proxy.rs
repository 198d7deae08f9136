//! A TCP proxy that a test can cut: the way to make a real store (moto's S3 server) go away
//! for a while without losing what it holds, which stopping an in-memory server would.
//!
//! While cut, live connections are shut down and new ones are accepted and closed at once,
//! as a store behind a failed network path looks to its client.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

pub struct Proxy {
    pub addr: String,
    cut: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Forwards a free 127.0.0.1 port to `upstream` (host:port) until the test ends.
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = listener.local_addr().expect("its address").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let upstream = upstream.to_string();
        let (accept_cut, accept_live) = (cut.clone(), live.clone());
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if accept_cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let pipes = (client.try_clone(), server.try_clone());
                let (Ok(client_reader), Ok(server_reader)) = pipes else {
                    continue;
                };
                if let Ok(mut held) = accept_live.lock() {
                    held.extend(client.try_clone());
                    held.extend(server.try_clone());
                }
                pipe(client_reader, server);
                pipe(server_reader, client);
            }
        });
        Proxy { addr, cut, live }
    }

    /// `http://` + the proxy's address.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every live connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Ok(mut held) = self.live.lock() {
            for stream in held.drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` into `to` on a thread of its own until either side closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
