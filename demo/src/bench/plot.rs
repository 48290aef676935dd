//! Line charts as PNG files, with no dependency: a small RGB canvas and a PNG writer that stores the image
//! uncompressed inside zlib "stored" blocks (RFC 1950/1951), so only CRC-32 and Adler-32 are needed.
//!
//! Charts carry no text (that would need a font); the report and docs/benchmarks.md give the axes.

use std::io;
use std::path::Path;

/// An RGB image.
pub struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

/// Colours of the series, in order.
pub const PALETTE: [[u8; 3]; 4] = [[31, 119, 180], [214, 39, 40], [44, 160, 44], [148, 103, 189]];
const AXIS: [u8; 3] = [60, 60, 60];
const GRID: [u8; 3] = [225, 225, 225];
const MARK: [u8; 3] = [255, 140, 0];
const MARGIN: usize = 40;

impl Canvas {
    /// A white canvas.
    pub fn new(width: usize, height: usize) -> Canvas {
        Canvas { width, height, pixels: vec![255; width * height * 3] }
    }

    fn set(&mut self, x: i64, y: i64, rgb: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.pixels[i..i + 3].copy_from_slice(&rgb);
        }
    }

    /// A line two pixels thick (Bresenham).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), rgb: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, rgb);
            self.set(x, y + 1, rgb);
            if x == x1 && y == y1 {
                return;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Plots `series` (each a list of (x, y) points, one colour each) on shared axes from 0 to the largest
    /// x and y, with horizontal grid lines at quarters and vertical marks at `marks` (x values).
    pub fn chart(&mut self, series: &[Vec<(f64, f64)>], marks: &[f64]) {
        let max_x = series.iter().flatten().map(|p| p.0).fold(f64::MIN_POSITIVE, f64::max);
        let max_y = series.iter().flatten().map(|p| p.1).fold(f64::MIN_POSITIVE, f64::max) * 1.1;
        let (w, h) = ((self.width - 2 * MARGIN) as f64, (self.height - 2 * MARGIN) as f64);
        let bottom = (self.height - MARGIN) as i64;
        let at = |(x, y): (f64, f64)| (MARGIN as i64 + (x / max_x * w) as i64, bottom - (y / max_y * h) as i64);
        for q in 1..=4 {
            let y = max_y * f64::from(q) / 4.0;
            self.line(at((0.0, y)), at((max_x, y)), GRID);
        }
        for &m in marks {
            self.line(at((m, 0.0)), at((m, max_y)), MARK);
        }
        self.line(at((0.0, 0.0)), at((max_x, 0.0)), AXIS);
        self.line(at((0.0, 0.0)), at((0.0, max_y)), AXIS);
        for (s, points) in series.iter().enumerate() {
            let colour = PALETTE[s % PALETTE.len()];
            for pair in points.windows(2) {
                self.line(at(pair[0]), at(pair[1]), colour);
            }
        }
    }

    /// Writes the canvas as a PNG file.
    pub fn write_png(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.encode_png())
    }

    fn encode_png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity((self.width * 3 + 1) * self.height);
        for row in self.pixels.chunks(self.width * 3) {
            raw.push(0); // filter type: none
            raw.extend_from_slice(row);
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.width as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.height as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(&mut png, b"IDAT", &zlib_stored(&raw));
        chunk(&mut png, b"IEND", &[]);
        png
    }
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream of stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(65_535).collect() };
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_known_values() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    #[test]
    fn a_png_has_its_signature_header_and_end() {
        let mut c = Canvas::new(120, 90);
        c.chart(&[vec![(0.0, 0.0), (1.0, 2.0)], vec![(0.0, 1.0), (1.0, 0.5)]], &[0.5]);
        let png = c.encode_png();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
        let idat_len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        // Stored blocks: every row plus its filter byte, 5 bytes per block, zlib header and Adler-32.
        assert_eq!(idat_len, (120 * 3 + 1) * 90 + 5 * ((120 * 3 + 1) * 90usize).div_ceil(65_535) + 6);
    }
}
