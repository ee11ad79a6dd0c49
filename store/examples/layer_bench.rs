//! Benchmark driver for `bench/layer.sh`: times `write_layer` and `unpack_layer` on a real
//! tree, outside the test harness.
//!
//! ```text
//! layer_bench write DIR OUT [zstd|gzip|none]   # prints digest, diff_id, bytes in/out, seconds
//! layer_bench unpack BLOB DIR                  # DIR must exist and be empty
//! layer_bench zstd FILE OUT                    # the zstd library alone, strata's settings
//! ```

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use strata_store::layer::{Compression, WriteOptions, unpack_layer, write_layer};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["write", dir, out] => write(dir, out, "zstd"),
        ["write", dir, out, compression] => write(dir, out, compression),
        ["unpack", blob, dir] => unpack(blob, dir),
        ["zstd", file, out] => zstd_only(file, out),
        _ => Err("usage: layer_bench write DIR OUT [zstd|gzip|none] | unpack BLOB DIR".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write(dir: &str, out: &str, compression: &str) -> Result<(), Box<dyn std::error::Error>> {
    let compression = match compression {
        "zstd" => Compression::Zstd,
        "gzip" => Compression::Gzip,
        "none" => Compression::None,
        other => return Err(format!("unknown compression {other:?}").into()),
    };
    let start = Instant::now();
    let file = BufWriter::with_capacity(1 << 20, File::create(out)?);
    let info = write_layer(
        Path::new(dir),
        &WriteOptions {
            compression,
            ..Default::default()
        },
        file,
    )?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "digest {}\ndiff_id {}\nblob_bytes {}\nseconds {seconds:.3}",
        info.digest, info.diff_id, info.size
    );
    Ok(())
}

/// zstd -3 with strata's settings on a plain file: separates the compressor's speed from
/// the rest of the pipeline (compare with `zstd -T2 -3`).
fn zstd_only(file: &str, out: &str) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let mut encoder = zstd::stream::write::Encoder::new(BufWriter::new(File::create(out)?), 3)?;
    encoder.multithread(std::thread::available_parallelism()?.get() as u32)?;
    encoder.include_checksum(true)?;
    std::io::copy(
        &mut BufReader::with_capacity(1 << 20, File::open(file)?),
        &mut encoder,
    )?;
    encoder.finish()?;
    println!("seconds {:.3}", start.elapsed().as_secs_f64());
    Ok(())
}

fn unpack(blob: &str, dir: &str) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let diff_id = unpack_layer(
        BufReader::with_capacity(1 << 20, File::open(blob)?),
        Path::new(dir),
    )?;
    let seconds = start.elapsed().as_secs_f64();
    println!("diff_id {diff_id}\nseconds {seconds:.3}");
    Ok(())
}
