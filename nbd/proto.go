package nbd

import "github.com/pojntfx/go-nbd/pkg/protocol"

// Protocol constants from NetworkBlockDevice/nbd doc/proto.md. Those go-nbd's
// protocol package defines are taken from there; the rest it lacks.
const (
	MagicNBD         = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	MagicOption      = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	MagicOptionReply = protocol.NEGOTIATION_MAGIC_REPLY
	MagicRequest     = protocol.TRANSMISSION_MAGIC_REQUEST
	MagicSimpleReply = protocol.TRANSMISSION_MAGIC_REPLY
	MagicStructReply = uint32(0x668e33ef)
	MagicExtendedReq = uint32(0x21e41c71)

	// Handshake flags (server) and client flags.
	FlagFixedNewstyle       = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	FlagNoZeroes            = uint16(1 << 1)
	ClientFlagFixedNewstyle = uint32(1 << 0)
	ClientFlagNoZeroes      = uint32(1 << 1)

	// Options.
	OptExportName      = uint32(1)
	OptAbort           = protocol.NEGOTIATION_ID_OPTION_ABORT
	OptList            = protocol.NEGOTIATION_ID_OPTION_LIST
	OptPeekExport      = uint32(4)
	OptStartTLS        = uint32(5)
	OptInfo            = protocol.NEGOTIATION_ID_OPTION_INFO
	OptGo              = protocol.NEGOTIATION_ID_OPTION_GO
	OptStructuredReply = uint32(8)
	OptListMetaContext = uint32(9)
	OptSetMetaContext  = uint32(10)
	OptExtendedHeaders = uint32(11)

	// Option reply types.
	RepAck              = protocol.NEGOTIATION_TYPE_REPLY_ACK
	RepServer           = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	RepInfo             = protocol.NEGOTIATION_TYPE_REPLY_INFO
	RepMetaContext      = uint32(4)
	RepErrUnsup         = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	RepErrPolicy        = uint32(2 | 1<<31)
	RepErrInvalid       = uint32(3 | 1<<31)
	RepErrPlatform      = uint32(4 | 1<<31)
	RepErrTLSReqd       = uint32(5 | 1<<31)
	RepErrUnknown       = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	RepErrShutdown      = uint32(7 | 1<<31)
	RepErrBlockSizeReqd = uint32(8 | 1<<31)
	RepErrTooBig        = uint32(9 | 1<<31)

	// NBD_INFO types.
	InfoExport      = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	InfoName        = protocol.NEGOTIATION_TYPE_INFO_NAME
	InfoDescription = protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION
	InfoBlockSize   = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE

	// Transmission flags.
	TFlagHasFlags        = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	TFlagReadOnly        = uint16(1 << 1)
	TFlagSendFlush       = uint16(1 << 2)
	TFlagSendFUA         = uint16(1 << 3)
	TFlagRotational      = uint16(1 << 4)
	TFlagSendTrim        = uint16(1 << 5)
	TFlagSendWriteZeroes = uint16(1 << 6)
	TFlagSendDF          = uint16(1 << 7)
	TFlagCanMultiConn    = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
	TFlagSendResize      = uint16(1 << 9)
	TFlagSendCache       = uint16(1 << 10)
	TFlagSendFastZero    = uint16(1 << 11)

	// Commands.
	CmdRead        = protocol.TRANSMISSION_TYPE_REQUEST_READ
	CmdWrite       = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	CmdDisc        = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	CmdFlush       = uint16(3)
	CmdTrim        = uint16(4)
	CmdCache       = uint16(5)
	CmdWriteZeroes = uint16(6)
	CmdBlockStatus = uint16(7)
	CmdResize      = uint16(8)

	// Command flags.
	CmdFlagFUA      = uint16(1 << 0)
	CmdFlagNoHole   = uint16(1 << 1)
	CmdFlagDF       = uint16(1 << 2)
	CmdFlagReqOne   = uint16(1 << 3)
	CmdFlagFastZero = uint16(1 << 4)

	// Errors on the wire (Linux errno values, as the spec requires).
	EPERM     = protocol.TRANSMISSION_ERROR_EPERM
	EIO       = uint32(5)
	ENOMEM    = uint32(12)
	EINVAL    = protocol.TRANSMISSION_ERROR_EINVAL
	ENOSPC    = uint32(28)
	EOVERFLOW = uint32(75)
	ENOTSUP   = uint32(95)
	ESHUTDOWN = uint32(108)

	// Sizes on the wire.
	RequestHeaderSize     = 28
	SimpleReplyHeaderSize = 16
)
