//! Progress bars on a terminal; silence when stderr is piped or `--json` is given.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// An [`engine::Progress`] drawn with indicatif, or nothing.
#[derive(Debug)]
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    pub fn new(visible: bool) -> Bar {
        let bar = visible.then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{msg:>8} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b
        });
        Bar { bar }
    }
}

impl engine::Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        if let Some(b) = &self.bar {
            b.reset();
            b.set_length(total);
            b.set_position(0);
            b.set_message(phase.to_string());
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
