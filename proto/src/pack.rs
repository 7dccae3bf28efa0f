//! The set packer shared by the IPFIX and NetFlow v9 writers: a buffer bounded by the MTU,
//! a fixed-size message header, sets opened on demand and closed (length patched, optional
//! padding) when another set id comes or the message is finished.

#[derive(Debug, Clone)]
pub(crate) struct Packer {
    buf: Vec<u8>,
    mtu: usize,
    header_len: usize,
    /// Pad each set to a multiple of this many octets when it is closed (1 = no padding).
    align: usize,
    /// Open set: (set id, offset of its header).
    open: Option<(u16, usize)>,
    /// Records written since `begin`.
    records: u32,
}

impl Packer {
    pub(crate) fn new(mtu: usize, header_len: usize, align: usize) -> Self {
        let mtu = mtu.clamp(header_len + 64, 65535);
        Packer {
            buf: Vec::with_capacity(mtu),
            mtu,
            header_len,
            align,
            open: None,
            records: 0,
        }
    }

    pub(crate) fn mtu(&self) -> usize {
        self.mtu
    }

    /// Clears the buffer and reserves the message header (zeroed, returned for filling).
    pub(crate) fn begin(&mut self) -> &mut [u8] {
        self.buf.clear();
        self.buf.resize(self.header_len, 0);
        self.open = None;
        self.records = 0;
        &mut self.buf[..]
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn records(&self) -> u32 {
        self.records
    }

    pub(crate) fn open_set(&self) -> Option<u16> {
        self.open.map(|(id, _)| id)
    }

    /// Octets a record of `len` needs in set `set_id`, counting a new set header and the
    /// worst-case padding of the set it closes.
    fn cost(&self, set_id: u16, len: usize) -> usize {
        match self.open {
            Some((id, _)) if id == set_id => len,
            Some((_, start)) => self.pad_len(start) + 4 + len,
            None => 4 + len,
        }
    }

    fn pad_len(&self, set_start: usize) -> usize {
        let set_len = self.buf.len() - set_start;
        (self.align - set_len % self.align) % self.align
    }

    pub(crate) fn fits(&self, set_id: u16, len: usize) -> bool {
        self.buf.len() + self.cost(set_id, len) <= self.mtu
    }

    /// Reserves `len` zeroed octets for one record in set `set_id`, opening the set first
    /// when needed. `None` when it would pass the MTU (nothing is changed then).
    pub(crate) fn reserve(&mut self, set_id: u16, len: usize) -> Option<&mut [u8]> {
        if !self.fits(set_id, len) {
            return None;
        }
        if self.open_set() != Some(set_id) {
            self.close_set();
            let start = self.buf.len();
            self.buf.extend_from_slice(&set_id.to_be_bytes());
            self.buf.extend_from_slice(&[0, 0]);
            self.open = Some((set_id, start));
        }
        let at = self.buf.len();
        self.buf.resize(at + len, 0);
        self.records += 1;
        Some(&mut self.buf[at..])
    }

    /// Closes the open set: pads it and patches its length field.
    pub(crate) fn close_set(&mut self) {
        if let Some((_, start)) = self.open.take() {
            let pad = self.pad_len(start);
            self.buf.resize(self.buf.len() + pad, 0);
            let set_len = (self.buf.len() - start) as u16;
            self.buf[start + 2..start + 4].copy_from_slice(&set_len.to_be_bytes());
        }
    }

    /// Closes the open set and returns the whole message for the caller to patch its header.
    pub(crate) fn finish(&mut self) -> &mut [u8] {
        self.close_set();
        &mut self.buf[..]
    }
}
