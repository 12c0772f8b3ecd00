from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubscriptionAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUBSCRIPTION_ACTION_UNSPECIFIED: _ClassVar[SubscriptionAction]
    SUBSCRIPTION_ACTION_ADD: _ClassVar[SubscriptionAction]
    SUBSCRIPTION_ACTION_UPDATE: _ClassVar[SubscriptionAction]
    SUBSCRIPTION_ACTION_REMOVE: _ClassVar[SubscriptionAction]
SUBSCRIPTION_ACTION_UNSPECIFIED: SubscriptionAction
SUBSCRIPTION_ACTION_ADD: SubscriptionAction
SUBSCRIPTION_ACTION_UPDATE: SubscriptionAction
SUBSCRIPTION_ACTION_REMOVE: SubscriptionAction

class Audience(_message.Message):
    __slots__ = ("audience_id", "name", "description", "connector_id", "connector_ids", "subscribed", "member_count", "created_at_ms", "updated_at_ms", "settings")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AUDIENCE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_IDS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    audience_id: int
    name: str
    description: str
    connector_id: str
    connector_ids: _containers.RepeatedScalarFieldContainer[str]
    subscribed: bool
    member_count: int
    created_at_ms: int
    updated_at_ms: int
    settings: _containers.ScalarMap[str, str]
    def __init__(self, audience_id: _Optional[int] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., connector_id: _Optional[str] = ..., connector_ids: _Optional[_Iterable[str]] = ..., subscribed: _Optional[bool] = ..., member_count: _Optional[int] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., settings: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ApplySubscriptionRequest(_message.Message):
    __slots__ = ("account_id", "connector_id", "action", "audience_id", "audience_name", "audience_description", "settings", "timestamp_ms")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_NAME_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    connector_id: str
    action: SubscriptionAction
    audience_id: int
    audience_name: str
    audience_description: str
    settings: _containers.ScalarMap[str, str]
    timestamp_ms: int
    def __init__(self, account_id: _Optional[str] = ..., connector_id: _Optional[str] = ..., action: _Optional[_Union[SubscriptionAction, str]] = ..., audience_id: _Optional[int] = ..., audience_name: _Optional[str] = ..., audience_description: _Optional[str] = ..., settings: _Optional[_Mapping[str, str]] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class ApplySubscriptionResponse(_message.Message):
    __slots__ = ("audience", "stale")
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    audience: Audience
    stale: bool
    def __init__(self, audience: _Optional[_Union[Audience, _Mapping]] = ..., stale: _Optional[bool] = ...) -> None: ...

class AudienceChanges(_message.Message):
    __slots__ = ("audience_id", "audience_name", "add_mpids", "delete_mpids")
    AUDIENCE_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_NAME_FIELD_NUMBER: _ClassVar[int]
    ADD_MPIDS_FIELD_NUMBER: _ClassVar[int]
    DELETE_MPIDS_FIELD_NUMBER: _ClassVar[int]
    audience_id: int
    audience_name: str
    add_mpids: _containers.RepeatedScalarFieldContainer[int]
    delete_mpids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, audience_id: _Optional[int] = ..., audience_name: _Optional[str] = ..., add_mpids: _Optional[_Iterable[int]] = ..., delete_mpids: _Optional[_Iterable[int]] = ...) -> None: ...

class ApplyMembershipChangesRequest(_message.Message):
    __slots__ = ("account_id", "connector_id", "audiences", "timestamp_ms")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    connector_id: str
    audiences: _containers.RepeatedCompositeFieldContainer[AudienceChanges]
    timestamp_ms: int
    def __init__(self, account_id: _Optional[str] = ..., connector_id: _Optional[str] = ..., audiences: _Optional[_Iterable[_Union[AudienceChanges, _Mapping]]] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class ApplyMembershipChangesResponse(_message.Message):
    __slots__ = ("added", "removed", "unchanged", "stale")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    added: int
    removed: int
    unchanged: int
    stale: int
    def __init__(self, added: _Optional[int] = ..., removed: _Optional[int] = ..., unchanged: _Optional[int] = ..., stale: _Optional[int] = ...) -> None: ...

class GetUserAudiencesRequest(_message.Message):
    __slots__ = ("account_id", "mpid")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    MPID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    mpid: int
    def __init__(self, account_id: _Optional[str] = ..., mpid: _Optional[int] = ...) -> None: ...

class GetUserAudiencesResponse(_message.Message):
    __slots__ = ("audience_ids",)
    AUDIENCE_IDS_FIELD_NUMBER: _ClassVar[int]
    audience_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, audience_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class CheckMembershipRequest(_message.Message):
    __slots__ = ("account_id", "audience_id", "mpid")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_ID_FIELD_NUMBER: _ClassVar[int]
    MPID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    audience_id: int
    mpid: int
    def __init__(self, account_id: _Optional[str] = ..., audience_id: _Optional[int] = ..., mpid: _Optional[int] = ...) -> None: ...

class CheckMembershipResponse(_message.Message):
    __slots__ = ("member",)
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    member: bool
    def __init__(self, member: _Optional[bool] = ...) -> None: ...

class CountMembersRequest(_message.Message):
    __slots__ = ("account_id", "audience_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    audience_id: int
    def __init__(self, account_id: _Optional[str] = ..., audience_id: _Optional[int] = ...) -> None: ...

class CountMembersResponse(_message.Message):
    __slots__ = ("member_count",)
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    member_count: int
    def __init__(self, member_count: _Optional[int] = ...) -> None: ...

class ListMembersRequest(_message.Message):
    __slots__ = ("account_id", "audience_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    audience_id: int
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., audience_id: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMembersResponse(_message.Message):
    __slots__ = ("mpids", "next_page_token")
    MPIDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    mpids: _containers.RepeatedScalarFieldContainer[int]
    next_page_token: str
    def __init__(self, mpids: _Optional[_Iterable[int]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListAudiencesRequest(_message.Message):
    __slots__ = ("account_id", "without_settings", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    WITHOUT_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    without_settings: bool
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., without_settings: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAudiencesResponse(_message.Message):
    __slots__ = ("audiences", "next_page_token")
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    audiences: _containers.RepeatedCompositeFieldContainer[Audience]
    next_page_token: str
    def __init__(self, audiences: _Optional[_Iterable[_Union[Audience, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
